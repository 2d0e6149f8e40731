"""The builtin `hf` generator: the generator conformance suite, plus hf-specific behaviour and `iter_buckets`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlx.builtin.configs import HFGeneratorConfig
from rlx.builtin.hf_generator import HFGenerator, filter_logits, resolve_dtype
from rlx.interfaces import ModelSpec, SamplingParams
from rlx.testing import GeneratorConformance, iter_safetensors, make_tiny_model
from rlx.weights import iter_buckets


class TestHFConformance(GeneratorConformance):
    @pytest.fixture(scope="class")
    def make_generator(self):
        # a small batch so the suite's 24-row requests also exercise splitting into several batches
        return lambda model_spec: HFGenerator(HFGeneratorConfig(batch_size=8, device="cpu"), model=model_spec, seed=0)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
class TestHFConformanceCUDA(GeneratorConformance):
    @pytest.fixture(scope="class")
    def make_generator(self):
        return lambda model_spec: HFGenerator(HFGeneratorConfig(batch_size=8, device="cuda"), model=model_spec, seed=0)


@pytest.mark.gpu
@needs_cuda
class TestHFConformanceCUDABF16(TestHFConformanceCUDA):
    # bf16 weights and activations against the fp32 reference: bf16 keeps 8 mantissa bits and the suite's
    # peaked random model has large logits, so errors are far above fp32's ~1e-5. Measured on an H100:
    # mean exp|delta| up to 1.055 and max |delta| 0.31 nats (T=0.7); the bounds leave ~2x headroom.
    model_dtype = "bfloat16"
    logprob_mismatch_tolerance = 1.1
    logprob_max_abs_diff = 0.6
    greedy_tolerance = 0.15


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("hf") / "base")


def _build(path: str, **config: object) -> HFGenerator:
    return HFGenerator(HFGeneratorConfig(device="cpu", **config), model=ModelSpec(path), seed=0)  # type: ignore[arg-type]


PROMPTS = [[1, 40, 41, 42, 43, 44, 45], [1, 50], [1, 60, 61, 62]]


def test_batch_size_does_not_change_greedy_output(base: str) -> None:
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=10)
    one_batch = _build(base, batch_size=64).generate(PROMPTS, params)
    split = _build(base, batch_size=2).generate(PROMPTS, params)
    assert [[c.token_ids for c in r] for r in split] == [[c.token_ids for c in r] for r in one_batch]
    for r1, r2 in zip(one_batch, split, strict=True):
        for a, b in zip(r1, r2, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_sampling_leaves_global_rng_alone_and_follows_factory_seed(base: str) -> None:
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6)
    state = torch.get_rng_state()
    first = _build(base).generate(PROMPTS, params)
    assert torch.equal(torch.get_rng_state(), state)
    # an unseeded call draws its seed from the factory seed: same factory seed, same stream
    assert _build(base).generate(PROMPTS, params) == first
    gen = _build(base)
    assert gen.generate(PROMPTS, params) == first
    assert gen.generate(PROMPTS, params) != first  # the next call continues the stream


def test_cpu_threads_apply_while_generating_only(base: str) -> None:
    gen = _build(base, cpu_threads=1)
    seen: list[int] = []
    generate_batch = gen._generate_batch

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return generate_batch(*args, **kwargs)

    gen._generate_batch = spy  # type: ignore[method-assign]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen.generate(PROMPTS, SamplingParams(max_new_tokens=2))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_update_weights_errors_name_the_problem(base: str) -> None:
    gen = _build(base)
    with pytest.raises(KeyError, match="model.layers.0.mlp.up_proj.weight"):
        gen.update_weights(iter([("model.layers.0.mlp.up_proj.weigth", torch.zeros(1))]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        gen.update_weights(iter([("model.norm.weight", torch.zeros(3))]))


def test_update_weights_copies_in_place_and_handles_tied_weights(tmp_path: Path) -> None:
    tied = make_tiny_model(tmp_path / "tied", tie_word_embeddings=True)
    gen = _build(tied)
    embed = gen.model.get_input_embeddings().weight
    assert gen.model.get_output_embeddings().weight is embed
    storage = embed.data_ptr()
    new = torch.randn_like(embed)
    gen.update_weights(iter([("lm_head.weight", new)]))  # the name the trainer may send for the tied head
    assert embed.data_ptr() == storage and torch.equal(embed, new)
    assert torch.equal(gen.model.get_output_embeddings().weight, new)


def test_update_weights_accepts_other_dtypes(tmp_path: Path, base: str) -> None:
    gen = _build(base)
    other = make_tiny_model(tmp_path / "other", seed=5)
    gen.update_weights((name, t.to(torch.bfloat16)) for name, t in iter_safetensors(other))
    assert gen.model.model.norm.weight.dtype == torch.float32
    expected = dict(iter_safetensors(other))["model.layers.1.mlp.down_proj.weight"].to(torch.bfloat16).float()
    assert torch.equal(gen.model.model.layers[1].mlp.down_proj.weight, expected)


def test_sleep_and_wake_up_are_noops_on_cpu(base: str) -> None:
    gen = _build(base)
    gen.sleep()
    assert next(gen.model.parameters()).device.type == "cpu"
    gen.wake_up()
    assert gen.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))[0][0].finish_reason in ("stop", "length")


def test_bad_sampling_params_are_rejected(base: str) -> None:
    gen = _build(base)
    with pytest.raises(ValueError, match="SamplingParams.n must be >= 1"):
        gen.generate(PROMPTS, SamplingParams(n=0))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate([[1, 2], []], SamplingParams())


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    inf = float("-inf")
    assert filter_logits(logits, top_k=2, top_p=1.0)[0, 2:].tolist() == [inf, inf]
    # mass above each token: 0, 0.5, 0.75, 0.9 -> with top_p 0.7 the first two survive, 0.75 >= 0.7 drops
    kept = torch.isfinite(filter_logits(logits, top_k=-1, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_k=-1, top_p=0.3))[0].tolist() == [True, False, False, False]
    assert torch.equal(filter_logits(logits, top_k=0, top_p=1.0), logits)
    shuffled = logits[:, [2, 0, 3, 1]]  # order in the vocabulary must not matter
    assert torch.isfinite(filter_logits(shuffled, top_k=-1, top_p=0.7))[0].tolist() == [False, True, False, True]


def test_dtype_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", "auto", device=cpu) == torch.float32
    assert resolve_dtype("auto", "auto", device=cuda) == torch.bfloat16
    assert resolve_dtype("auto", "float16", device=cpu) == torch.float16
    assert resolve_dtype("bfloat16", "float32", device=cpu) == torch.bfloat16


def test_hf_is_registered_as_a_builtin() -> None:
    from rlx.plugins import catalog

    spec = catalog().get("generator", "hf")
    assert spec.plugin.origin == "builtin" and spec.load_factory() is HFGenerator


# ------------------------------------------------------------------------------------------ iter_buckets


def _named(*sizes: int) -> list[tuple[str, torch.Tensor]]:
    return [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate(sizes)]


def test_iter_buckets_groups_in_order_within_the_limit() -> None:
    buckets = list(iter_buckets(_named(1, 2, 1, 3, 1), max_bytes=16))  # 4 bytes per element
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1", "t2"], ["t3", "t4"]]
    assert all(sum(t.numel() * 4 for _, t in b) <= 16 for b in buckets)


def test_iter_buckets_sends_a_too_large_tensor_alone() -> None:
    buckets = list(iter_buckets(_named(1, 10, 1), max_bytes=8))
    assert [[n for n, _ in b] for b in buckets] == [["t0"], ["t1"], ["t2"]]
    assert list(iter_buckets([], max_bytes=8)) == []
    with pytest.raises(ValueError, match="positive"):
        list(iter_buckets(_named(1), max_bytes=0))


def test_iter_buckets_pulls_lazily() -> None:
    pulled: list[str] = []

    def stream():
        for name, tensor in _named(2, 2, 2, 2):
            pulled.append(name)
            yield name, tensor

    buckets = iter_buckets(stream(), max_bytes=16)
    first = next(buckets)
    assert [n for n, _ in first] == ["t0", "t1"]
    assert pulled == ["t0", "t1", "t2"]  # one tensor past the bucket, no more
