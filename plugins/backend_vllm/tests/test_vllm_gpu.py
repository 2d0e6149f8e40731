"""The `vllm` generator on CUDA with its engine core in its own process: weight pushes by CUDA IPC handle.

Only the handle crosses vLLM's RPC; the worker opens the trainer's buffer on the same GPU and copies it. Checked
against the byte path (rpc) on the same engine: the greedy samples must be identical.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlx.interfaces import ModelSpec, SamplingParams
from rlx.testing import iter_safetensors

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA IPC weight push)"),
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="needs the vllm engine: pip install 'rlx-vllm[cuda]'",
    ),
]


def test_cuda_ipc_push_to_an_engine_in_another_process(tmp_path_factory: pytest.TempPathFactory) -> None:
    from rlx.testing.fixtures import session_tiny_models
    from rlx.testing.reference import greedy_margins
    from rlx_vllm.generator import VLLMGenerator
    from rlx_vllm.plugin import VLLMConfig

    models = session_tiny_models(tmp_path_factory)
    config = VLLMConfig(
        in_process=False,
        weight_sync="ipc",
        weight_bucket_mb=1,  # the tiny model travels in several buckets, layers straddle them
        gpu_memory_utilization=0.2,
        enable_sleep_mode=False,
        enforce_eager=True,
        max_num_seqs=8,
    )
    generator = VLLMGenerator(config, model=ModelSpec(models.base, dtype="float32", max_seq_len=256), seed=0)
    prompts = [[1, 5, 6, 7, 8, 9], [2, 9, 4]]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    base = [(name, tensor.cuda()) for name, tensor in iter_safetensors(models.base)]
    other = [(name, tensor.cuda()) for name, tensor in iter_safetensors(models.other)]
    try:
        before = generator.generate(prompts, params)
        generator.weight_sync = "rpc"
        generator.update_weights(iter(other))
        by_bytes = generator.generate(prompts, params)
        assert by_bytes != before
        generator.update_weights(iter(base))
        generator.weight_sync = "ipc"
        torch.cuda.synchronize()
        allocated = torch.cuda.memory_allocated()
        for _ in range(2):  # the second round reuses the caching allocator's blocks: the same IPC handles again
            generator.update_weights(iter(other))
            assert generator.last_update["weight_update/transport"] == "ipc"
            assert generator.last_update["weight_update/buckets"] >= 2
            assert generator.generate(prompts, params) == by_bytes
            generator.update_weights(iter(base))
            assert generator.generate(prompts, params) == before
        # every exported bucket was freed once the worker released it (none left in torch's IPC limbo)
        assert torch.cuda.memory_allocated() == allocated
        sequences = [(prompt, list(c[0].token_ids)) for prompt, c in zip(prompts, by_bytes, strict=True)]
        margins = greedy_margins(models.other, sequences)
        assert max(max(m) for m in margins) <= 1e-2  # CUDA fp32 against the HF model on CPU
    finally:
        generator.close()


def test_sleep_that_drops_the_weights_then_a_full_push_samples_as_before(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Sleep mode on CUDA, in process (the colocated loop's engine): a level-2 sleep (weights discarded) refuses to wake
    until a push, and after a full push greedy samples are those of a level-1 cycle (weights kept) and of the start."""
    from rlx.generation import sleep_before_weight_push
    from rlx.testing.fixtures import session_tiny_models
    from rlx_vllm.generator import VLLMGenerator
    from rlx_vllm.plugin import VLLMConfig

    models = session_tiny_models(tmp_path_factory)
    config = VLLMConfig(gpu_memory_utilization=0.2, enable_sleep_mode=True, enforce_eager=True, max_num_seqs=8)
    generator = VLLMGenerator(config, model=ModelSpec(models.base, dtype="float32", max_seq_len=256), seed=0)
    prompts = [[1, 5, 6, 7, 8, 9], [2, 9, 4]]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    try:
        assert generator.can_drop_weights_on_sleep
        before = generator.generate(prompts, params)
        generator.sleep()  # level 1: kept on the host
        generator.wake_up()
        assert generator.generate(prompts, params) == before
        for weights in (models.other, models.base):  # drop, push, sample: twice
            sleep_before_weight_push(generator)
            assert generator.weights_dropped
            with pytest.raises(RuntimeError, match="discarded"):
                generator.wake_up()
            generator.update_weights(iter([(n, t.cuda()) for n, t in iter_safetensors(weights)]))
            assert not generator.weights_dropped
            generator.wake_up()
            after = generator.generate(prompts, params)
            assert (after == before) is (weights == models.base)
    finally:
        generator.close()
