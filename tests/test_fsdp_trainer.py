"""The builtin `fsdp` trainer on CPU (gloo, fp32): log-probabilities (padded and packed), exact micro-batching and
packing, token budgets, checkpoints, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.builtin.fsdp_trainer import FSDPTrainer
from rlx.errors import ConfigError
from rlx.interfaces import ModelSpec, TrainBatch


def pg_loss(new_logprobs: torch.Tensor, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A plain policy-gradient PolicyLossFn: -sum(logp * A * w); metric: the summed weights."""
    assert batch.advantages is not None and batch.loss_weights is not None
    loss = -(new_logprobs * batch.advantages[:, None] * batch.loss_weights).sum()
    return loss, {"weight": batch.loss_weights.sum().detach()}


def make_batch(rows: int, width: int = 16, *, seed: int = 0, vocab: int = 400) -> TrainBatch:
    """Right-padded sequences of different lengths; prompt = first 4 tokens; token-mean loss weights."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (rows, width), generator=gen)
    lengths = torch.randint(width // 2, width + 1, (rows,), generator=gen)
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask  # pad id 0
    completion_mask = attention_mask.bool() & (torch.arange(width)[None, :] >= 4)
    weights = completion_mask.float() / completion_mask.sum()
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        old_logprobs=torch.zeros(rows, width),
        advantages=torch.randn(rows, generator=gen),
        loss_weights=weights,
    )


def hf_logprobs(model: torch.nn.Module, batch: TrainBatch, temperature: float = 1.0) -> torch.Tensor:
    """The reference computation: full HF forward, log_softmax(logits / T), aligned to input_ids."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return F.pad(logp, (1, 0)) * batch.completion_mask


def weights_of(trainer: object) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in trainer.named_weights()}  # type: ignore[attr-defined]


def grads_of(trainer: FSDPTrainer) -> dict[str, torch.Tensor]:
    """The full (summed) gradients left by the last train_step, by parameter name."""
    return {name: p.grad.full_tensor().clone() for name, p in trainer.policy.named_parameters() if p.grad is not None}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlx.models.tiny import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny_tied_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlx.models.tiny import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-tied"), seed=1, tie_word_embeddings=True)


def make_trainer(path: str, max_seq_len: int = 16, **options: object) -> FSDPTrainer:
    config = FSDPTrainerConfig(**{"lr": 1e-2, "grad_clip": None, "micro_batch_size": 2, "device": "cpu", **options})
    return FSDPTrainer(config, model=ModelSpec(path, max_seq_len=max_seq_len), seed=0, with_reference=False)


# packed micro-batches: (train budget, logprobs budget, row cap). make_batch rows hold 8-16 tokens.
PACKINGS = {
    "one-row-each": {"max_tokens_per_micro_batch": 16, "logprob_max_tokens_per_micro_batch": 16},
    "few": {"max_tokens_per_micro_batch": 40, "logprob_max_tokens_per_micro_batch": 40},
    "all-in-one": {"max_tokens_per_micro_batch": 1000, "micro_batch_size": None},
    "row-cap": {"max_tokens_per_micro_batch": 1000, "micro_batch_size": 3},
    "sdpa-mask": {"max_tokens_per_micro_batch": 40, "attention": "sdpa"},
    "sdpa-per-sequence": {"max_tokens_per_micro_batch": 40, "attention": "varlen_sdpa"},
}


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_lm_head_gradients_and_entropy(temperature: float, with_bias: bool) -> None:
    """The hand-written backward of the LM-head chunk against finite differences (float64)."""
    from rlx.builtin.fsdp_model import HeadMath, _LMHeadLogprobs

    eager = HeadMath(compiled=False)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(20, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(20, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 20, (7,), generator=gen)

    def logprobs(h: torch.Tensor, w: torch.Tensor, *b: torch.Tensor) -> torch.Tensor:
        return _LMHeadLogprobs.apply(h, w, b[0] if b else None, targets, 1.0 / temperature, False, eager)[0]

    inputs = (hidden, weight) + ((bias,) if bias is not None else ())
    assert torch.autograd.gradcheck(logprobs, inputs)
    logp, entropy = _LMHeadLogprobs.apply(hidden, weight, bias, targets, 1.0 / temperature, True, eager)
    log_softmax = torch.log_softmax(F.linear(hidden, weight, bias) / temperature, dim=-1)
    torch.testing.assert_close(logp, log_softmax.gather(-1, targets[:, None])[:, 0])
    torch.testing.assert_close(entropy, -(log_softmax.exp() * log_softmax).sum(-1))


@pytest.mark.slow
def test_compiled_lm_head_math_equals_eager() -> None:
    """trainer.compile also compiles the LM head's softmax math: same log-probs, entropy and gradients (fp32, CPU
    inductor; bf16 on GPU is in docs/benchmarks.md)."""
    from rlx.builtin.fsdp_model import HeadMath, _LMHeadLogprobs

    gen = torch.Generator().manual_seed(1)
    results = []
    for math in (HeadMath(compiled=False), HeadMath(compiled=True)):
        hidden = torch.randn(9, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
        weight = torch.randn(50, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
        targets = torch.randint(0, 50, (9,), generator=gen.manual_seed(4))
        logp, entropy = _LMHeadLogprobs.apply(hidden, weight, None, targets, 1 / 0.7, True, math)
        (logp * torch.linspace(-1, 1, 9)).sum().backward()
        results.append((logp.detach(), entropy, hidden.grad, weight.grad))
    for eager_value, compiled_value in zip(*results, strict=True):
        torch.testing.assert_close(compiled_value, eager_value, atol=1e-5, rtol=1e-5)


def test_compiled_per_sequence_attention_matches_eager_and_does_not_recompile_per_packing(tiny_path: str) -> None:
    """attention=varlen_sdpa under trainer.compile: the per-sequence loop runs outside the compiled layers, so a new
    packing (other sequence count and starts) reuses the graphs (it recompiled at each one: 240 s of first step on
    an H200), and the values are eager's (fp32, CPU inductor)."""
    from torch._dynamo.utils import counters

    batches = [make_batch(rows, seed=rows) for rows in (5, 7, 6, 3)]
    results = {}
    for compile_option in (True, False):
        trainer = make_trainer(tiny_path, compile=compile_option, attention="varlen_sdpa", micro_batch_size=None,
                               max_tokens_per_micro_batch=40)  # fmt: skip
        try:
            assert trainer.compiled is compile_option
            values = [trainer.logprobs(batches[0])]
            graphs = counters["stats"]["unique_graphs"]
            values += [trainer.logprobs(batch) for batch in batches[1:]]
            if compile_option:
                assert counters["stats"]["unique_graphs"] == graphs, "a new packing compiled new graphs"
            trainer.train_step(batches[1], pg_loss)
            values.append(trainer.logprobs(batches[2]))
            results[compile_option] = values
        finally:
            trainer.close()
    for compiled, eager in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("packing", ["rows", *PACKINGS])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_a_plain_hf_forward(tiny_path: str, temperature: float, packing: str) -> None:
    """Padded rows and packed sequences (any budget, either attention) give HF's per-row log-probabilities."""
    from transformers import AutoModelForCausalLM

    batch = make_batch(5, seed=1)
    trainer = make_trainer(tiny_path, logits_chunk_tokens=7, **PACKINGS.get(packing, {}))  # chunks straddle rows
    try:
        got = trainer.logprobs(batch, temperature=temperature)
    finally:
        trainer.close()
    hf = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32, attn_implementation="sdpa")
    expected = hf_logprobs(hf, batch, temperature)
    assert got.shape == batch.input_ids.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got[~batch.completion_mask] == 0).all()
    assert (got[batch.completion_mask] < 0).all()


def rolled(batch: TrainBatch, row: int, shift: int) -> TrainBatch:
    """`batch` with `row` rolled right by `shift` columns (its pads move to the left)."""
    values = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.__dict__.items()}
    for name in ("input_ids", "attention_mask", "completion_mask"):
        values[name][row] = torch.roll(values[name][row], shift)
    return TrainBatch(**values)


def test_logprobs_of_rows_that_are_not_right_padded(tiny_path: str) -> None:
    """Padded mode passes the padding mask (HF semantics: positions count the pads); packed mode drops the pads,
    so a left-padded row scores exactly as its right-padded self (as a generator, which never sees pads)."""
    from transformers import AutoModelForCausalLM

    right = make_batch(3, seed=7)
    row = int(right.attention_mask.sum(-1).argmin())
    shift = int((right.attention_mask[row] == 0).sum())
    assert shift > 0
    batch = rolled(right, row, shift)
    hf = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32, attn_implementation="sdpa")
    trainer = make_trainer(tiny_path)
    try:
        torch.testing.assert_close(trainer.logprobs(batch), hf_logprobs(hf, batch), atol=1e-5, rtol=0)
    finally:
        trainer.close()
    trainer = make_trainer(tiny_path, max_tokens_per_micro_batch=40)
    try:
        got = trainer.logprobs(batch)
    finally:
        trainer.close()
    expected = hf_logprobs(hf, right)
    expected[row] = torch.roll(expected[row], shift)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_reference_policy_stays_frozen(tiny_path: str) -> None:
    batch = make_batch(4, seed=2)
    config = FSDPTrainerConfig(lr=1e-2, micro_batch_size=4, device="cpu")
    trainer = FSDPTrainer(config, model=ModelSpec(tiny_path), seed=0, with_reference=True)
    try:
        before = trainer.logprobs(batch, reference=True)
        trainer.train_step(batch, pg_loss)
        after_ref = trainer.logprobs(batch, reference=True)
        after_policy = trainer.logprobs(batch)
    finally:
        trainer.close()
    torch.testing.assert_close(after_ref, before, atol=0, rtol=0)
    assert (after_policy - before).abs().max() > 1e-4


# Adam's first step is about lr * sign(g): a gradient of ~1e-9 whose last bits differ could flip an update.
# A larger eps keeps the comparison about the gradients (also compared directly).
EXACT = {"eps": 1e-4}


@pytest.mark.parametrize(
    "variants",
    [
        pytest.param([{"micro_batch_size": m} for m in (1, 8, 3)], id="rows"),
        pytest.param([{"micro_batch_size": 8}, *PACKINGS.values()], id="packed"),
    ],
)
def test_micro_batching_and_packing_do_not_change_the_update(tiny_path: str, variants: list[dict]) -> None:
    batch = make_batch(8, seed=3)
    results, weights, grads = [], [], []
    for options in variants:
        trainer = make_trainer(tiny_path, **{**EXACT, **options})
        try:
            if not weights:
                initial = weights_of(trainer)
            results.append(trainer.train_step(batch, pg_loss))
            weights.append(weights_of(trainer))
            grads.append(grads_of(trainer))
        finally:
            trainer.close()
    for other in range(1, len(variants)):
        # the gradients are the invariant (sums in another order: ~1e-8 apart); Adam turns a 1e-8 difference of
        # a near-zero gradient into lr * 1e-8 / eps = 1e-6 of weight, so weights get 0.1% of lr
        assert_same_weights(grads[0], grads[other], atol=1e-7)
        assert_same_weights(weights[0], weights[other], atol=1e-5)
        for key in ("loss", "entropy", "grad_norm", "weight"):
            assert results[other][key] == pytest.approx(results[0][key], rel=1e-5), (variants[other], key)
    moved = max((weights[0][n] - initial[n]).abs().max().item() for n in initial)
    assert moved > 1e-3  # the step did something
    assert results[0]["weight"] == pytest.approx(1.0, rel=1e-5)  # loss_weights summed over micro-batches
    assert 0 < results[0]["entropy"] <= torch.log(torch.tensor(512.0)).item()


def test_reshard_after_forward_auto_keeps_weights_gathered_on_one_rank(tiny_path: str) -> None:
    """auto = false on one rank (the gathered weights are only a cast copy): the same update as ZeRO-3 resharding."""
    batch = make_batch(8, seed=5)
    weights, resolved = [], []
    for reshard in ("auto", True):
        trainer = make_trainer(tiny_path, max_tokens_per_micro_batch=40, reshard_after_forward=reshard, **EXACT)
        try:
            resolved.append(trainer.reshard_after_forward)
            trainer.train_step(batch, pg_loss)
            weights.append(weights_of(trainer))
        finally:
            trainer.close()
    assert resolved == [False, True]
    assert_same_weights(weights[0], weights[1], atol=1e-6)


def test_a_sequence_longer_than_the_budget_is_a_clear_error(tiny_path: str) -> None:
    with pytest.raises(ConfigError, match=r"model.max_seq_len \(16\) is longer than trainer.max_tokens_per_micro"):
        make_trainer(tiny_path, max_tokens_per_micro_batch=12)
    trainer = make_trainer(tiny_path, max_seq_len=8, max_tokens_per_micro_batch=12)  # max_seq_len understated
    try:
        batch = make_batch(4, seed=3)
        longest = int(batch.attention_mask.sum(-1).max())
        with pytest.raises(ConfigError, match=rf"has {longest} tokens, trainer.max_tokens_per_micro_batch is 12\. "
                           rf"Set trainer.max_tokens_per_micro_batch >= {longest}"):  # fmt: skip
            trainer.train_step(batch, pg_loss)
        with pytest.raises(ConfigError, match=r"trainer.logprob_max_tokens_per_micro_batch is 48"):
            trainer.logprobs(make_batch(2, width=64, seed=3))
    finally:
        trainer.close()
    with pytest.raises(ValidationError, match="set trainer.max_tokens_per_micro_batch too"):
        FSDPTrainerConfig(logprob_max_tokens_per_micro_batch=4096)


def test_step_metrics_lr_schedule_and_clipping(tiny_path: str) -> None:
    batch = make_batch(4, seed=4)
    trainer = make_trainer(tiny_path, lr=1e-3, warmup_steps=2, warmup_start_factor=0.5, grad_clip=1e-3)
    try:
        lrs = [trainer.train_step(batch, pg_loss)["lr"] for _ in range(4)]
        # the gradients the optimizer steps with are clipped; afterwards they are freed (memory for a colocated
        # generator), so look at them as the optimizer sees them
        seen = []
        step = trainer.optimizer.step

        def spy(*args, **kwargs):
            seen.append(sum(p.grad.full_tensor().pow(2).sum() for p in trainer.policy.parameters() if p.grad is not None))
            return step(*args, **kwargs)

        trainer.optimizer.step = spy
        metrics = trainer.train_step(batch, pg_loss)
        total = seen[0]
        assert all(p.grad is None for p in trainer.policy.parameters())
    finally:
        trainer.close()
    assert lrs == pytest.approx([5e-4, 7.5e-4, 1e-3, 1e-3])
    assert set(metrics) >= {"loss", "grad_norm", "lr", "entropy", "weight"}
    # grad_norm is the norm before clipping; the gradients left behind are clipped to grad_clip
    assert metrics["grad_norm"] > 1e-3
    assert total.sqrt().item() == pytest.approx(1e-3, rel=1e-3)


def test_checkpoint_round_trip_continues_identically(tiny_path: str, tmp_path: Path) -> None:
    batches = [make_batch(4, seed=s) for s in (10, 11, 12)]
    options = {"warmup_steps": 3, "lr": 5e-3}
    first = make_trainer(tiny_path, **options)
    try:
        first.train_step(batches[0], pg_loss)
        first.save_checkpoint(str(tmp_path / "ckpt"))
        expected = [first.train_step(b, pg_loss) for b in batches[1:]]
        expected_weights = weights_of(first)
    finally:
        first.close()
    second = make_trainer(tiny_path, **options)
    try:
        second.load_checkpoint(str(tmp_path / "ckpt"))
        got = [second.train_step(b, pg_loss) for b in batches[1:]]
        got_weights = weights_of(second)
    finally:
        second.close()
    assert_same_weights(expected_weights, got_weights, atol=0)
    assert [m["lr"] for m in got] == [m["lr"] for m in expected] == pytest.approx([5e-3 * 0.4, 5e-3 * 0.7])
    assert not (tmp_path / "ckpt.tmp").exists()


def test_load_checkpoint_rejects_a_folder_that_is_not_one(tiny_path: str, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_path)
    try:
        with pytest.raises(FileNotFoundError, match="not an rlx fsdp trainer checkpoint"):
            trainer.load_checkpoint(str(tmp_path))
    finally:
        trainer.close()


def test_export_hf_loads_with_transformers_and_gives_the_same_logprobs(tiny_tied_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    batch = make_batch(3, seed=5)
    trainer = make_trainer(tiny_tied_path)
    try:
        trainer.train_step(batch, pg_loss)  # export the trained weights, not the initial ones
        expected = trainer.logprobs(batch)
        names = [name for name, _ in trainer.named_weights()]
        trainer.export_hf(str(tmp_path / "hf"))
    finally:
        trainer.close()
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    torch.testing.assert_close(hf_logprobs(model, batch), expected, atol=1e-5, rtol=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).eos_token == "<|im_end|>"
    assert (tmp_path / "hf" / "generation_config.json").is_file()
    # named_weights: HF names, tied weights once (as save_pretrained writes them)
    assert set(names) == set(model.state_dict()) - {"lm_head.weight"}
    assert len(names) == len(set(names))


def test_activation_checkpointing_gives_the_same_update(tiny_path: str) -> None:
    batch = make_batch(4, seed=6)
    weights = []
    for checkpointing in (False, True):
        trainer = make_trainer(tiny_path, activation_checkpointing=checkpointing, **EXACT)
        try:
            trainer.train_step(batch, pg_loss)
            weights.append(weights_of(trainer))
        finally:
            trainer.close()
    assert_same_weights(weights[0], weights[1])



def test_pi_old_from_the_train_forward_gives_the_recomputed_update(tiny_path: str) -> None:
    """grpo.old_logprobs=from_train_forward: the GRPO loss with old_logprobs None (pi_old = this forward's detached
    log-probs) makes the same update as pi_old from a log-probs pass (fp32, one optimizer step)."""
    import dataclasses

    from rlx.grpo.losses import policy_loss

    batch = make_batch(4, seed=8)
    weights = []
    for recompute in (True, False):
        trainer = make_trainer(tiny_path, max_tokens_per_micro_batch=40)
        try:
            old = trainer.logprobs(batch) if recompute else None
            trainer.train_step(dataclasses.replace(batch, old_logprobs=old), policy_loss)
            weights.append(weights_of(trainer))
        finally:
            trainer.close()
    assert_same_weights(weights[0], weights[1], atol=1e-6)


def test_own_cuda_stream_is_accepted_and_a_no_op_on_cpu(tiny_path: str) -> None:
    """trainer.cuda_stream=own only matters on CUDA (tests/test_fsdp_trainer_gpu.py); on CPU there is no stream."""
    batch = make_batch(4, seed=35)
    got = []
    for stream in ("own", "default"):
        trainer = make_trainer(tiny_path, cuda_stream=stream, **EXACT)
        try:
            assert trainer.stream is None
            got.append(trainer.logprobs(batch))
        finally:
            trainer.close()
    torch.testing.assert_close(got[0], got[1], atol=0, rtol=0)
    with pytest.raises(ValidationError, match="cuda_stream"):
        FSDPTrainerConfig(cuda_stream="side")


def test_selective_checkpointing_makes_the_same_update_recomputing_only_the_cheap_ops(tiny_path: str) -> None:
    """trainer.activation_checkpointing=selective: the update of no checkpointing (fp32), with no matrix product or
    attention run again in backward (full checkpointing reruns them), but the norms recomputed as full does."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    products = {aten.mm.default, aten.addmm.default, aten.bmm.default}
    attention = {aten._scaled_dot_product_flash_attention_for_cpu.default}

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts = {"products": 0, "attention": 0, "rsqrt": 0}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            key = "products" if func in products else "attention" if func in attention else (
                "rsqrt" if func == aten.rsqrt.default else None)  # fmt: skip
            if key:
                self.counts[key] += 1
            return func(*args, **(kwargs or {}))

    batch = make_batch(6, seed=36)
    weights, counts = {}, {}
    for mode in (False, True, "selective"):
        trainer = make_trainer(tiny_path, max_tokens_per_micro_batch=40, activation_checkpointing=mode, **EXACT)
        try:
            with Count() as counter:
                trainer.train_step(batch, pg_loss)
            counts[mode] = counter.counts
            weights[mode] = weights_of(trainer)
        finally:
            trainer.close()
    assert_same_weights(weights[False], weights["selective"])
    assert_same_weights(weights[False], weights[True])
    for kind in ("products", "attention"):
        assert counts["selective"][kind] == counts[False][kind] < counts[True][kind], (kind, counts)
    assert counts[False]["rsqrt"] < counts["selective"]["rsqrt"] == counts[True]["rsqrt"], counts
    with pytest.raises(ValidationError, match="activation_checkpointing"):
        FSDPTrainerConfig(activation_checkpointing="some")


def test_selective_checkpointing_under_compilation_makes_the_eager_update(tiny_path: str) -> None:
    """With trainer.compile the selective checkpoint sits inside each compiled layer (dynamo traces the policy): two
    steps make the eager selective update (fp32, CPU inductor)."""
    weights = []
    for compile_option in (False, True):
        trainer = make_trainer(tiny_path, max_tokens_per_micro_batch=40, activation_checkpointing="selective",
                               compile=compile_option, **EXACT)  # fmt: skip
        try:
            for seed in (37, 38):
                trainer.train_step(make_batch(6, seed=seed), pg_loss)
            weights.append(weights_of(trainer))
        finally:
            trainer.close()
    assert_same_weights(weights[0], weights[1], atol=1e-5)
