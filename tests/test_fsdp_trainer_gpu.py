"""The `fsdp` trainer on CUDA: bf16 compute over fp32 master weights, NCCL; 2-GPU group vs 1 GPU."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.builtin.fsdp_trainer import FSDPTrainer
from rlx.interfaces import ModelSpec
from tests.test_fsdp_trainer import hf_logprobs, make_batch, pg_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlx.models.tiny import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny"), seed=0, tie_word_embeddings=True)


def test_bf16_train_step_checkpoint_and_export(tiny_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    batch = make_batch(6, seed=30)
    config = FSDPTrainerConfig(lr=1e-3, micro_batch_size=4)
    trainer = FSDPTrainer(config, model=ModelSpec(tiny_path), seed=0, with_reference=True)
    try:
        assert trainer.device.type == "cuda" and trainer.compute_dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())  # fp32 master weights
        hf = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
        expected = hf_logprobs(hf, batch)
        got = trainer.logprobs(batch)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=0.1, rtol=0.02)  # bf16 forward vs fp32
        torch.testing.assert_close(trainer.logprobs(batch, reference=True), got, atol=1e-3, rtol=0)

        metrics = trainer.train_step(batch, pg_loss)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
        assert metrics["weight"] == pytest.approx(1.0, rel=1e-5)
        weights = dict(trainer.named_weights())
        assert all(t.dtype == torch.bfloat16 and t.is_cuda for t in weights.values())

        trainer.save_checkpoint(str(tmp_path / "ckpt"))
        after = trainer.train_step(batch, pg_loss)
        trainer.load_checkpoint(str(tmp_path / "ckpt"))
        again = trainer.train_step(batch, pg_loss)
        assert again["loss"] == pytest.approx(after["loss"], rel=1e-3)

        trainer.export_hf(str(tmp_path / "hf"))
        exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
        assert exported.dtype == torch.bfloat16
        torch.testing.assert_close(hf_logprobs(exported.float(), batch), trainer.logprobs(batch), atol=0.1, rtol=0.02)
    finally:
        trainer.close()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_match_one(tiny_path: str) -> None:
    from rlx.cluster.local import LocalTrainerGroup
    from rlx.plan import Choice
    from rlx.registry import BuildContext

    config = FSDPTrainerConfig(lr=1e-3, micro_batch_size=2, dtype="float32", eps=1e-4)
    batch = make_batch(5, seed=31)
    weights = []
    for world_size in (1, 2):
        group = LocalTrainerGroup(
            Choice.named("trainer", "fsdp", config),
            BuildContext(seed=0, model=ModelSpec(tiny_path)),
            world_size=world_size,
            timeout_s=300,
        )
        try:
            group.train_step(batch, functools.partial(pg_loss))
            weights.append({k: v.float().cpu() for k, v in group.named_weights()})
        finally:
            group.close()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], atol=1e-5, rtol=0)


def test_packed_bf16_matches_padded_and_trains(tiny_path: str) -> None:
    """Packed micro-batches through torch's FlashAttention varlen kernel vs padded rows (bf16 both)."""
    from rlx.builtin.fsdp_model import uses_flash_varlen

    batch = make_batch(6, seed=32)
    model = ModelSpec(tiny_path, max_seq_len=16)
    padded = FSDPTrainer(FSDPTrainerConfig(lr=1e-3, micro_batch_size=2), model=model, seed=0)
    try:
        expected = padded.logprobs(batch)
    finally:
        padded.close()
    config = FSDPTrainerConfig(lr=1e-3, max_tokens_per_micro_batch=40, reshard_after_forward=False)
    packed = FSDPTrainer(config, model=model, seed=0)
    try:
        assert uses_flash_varlen(packed.device, packed.compute_dtype)
        got = packed.logprobs(batch)
        assert packed.last_call["micro_batches"] == 1  # logprobs budget 4 x 40 tokens: every row in one
        torch.testing.assert_close(got, expected, atol=0.05, rtol=0)  # bf16: different kernels, same math
        metrics = packed.train_step(batch, pg_loss)
        assert packed.last_call["micro_batches"] >= 2
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
        assert metrics["weight"] == pytest.approx(1.0, rel=1e-5)
        assert (packed.logprobs(batch) - got).abs().max() > 0  # the step changed the policy
    finally:
        packed.close()


def test_compiled_trainer_is_the_gpu_default_and_matches_eager(tiny_path: str) -> None:
    """trainer.compile=auto compiles on CUDA; compiled and eager give the same log-probs and the same update (bf16)."""
    batch = make_batch(6, seed=33)
    model = ModelSpec(tiny_path, max_seq_len=16)
    results = {}
    for compile_option in ("auto", False):
        config = FSDPTrainerConfig(lr=1e-3, max_tokens_per_micro_batch=40, compile=compile_option)
        trainer = FSDPTrainer(config, model=model, seed=0)
        try:
            assert trainer.compiled is (compile_option == "auto")
            before = trainer.logprobs(batch)
            trainer.train_step(batch, pg_loss)
            results[compile_option] = (before, trainer.logprobs(batch))
        finally:
            trainer.close()
    for compiled_value, eager_value in zip(results["auto"], results[False], strict=True):
        torch.testing.assert_close(compiled_value, eager_value, atol=0.05, rtol=0)
    assert (results["auto"][1] - results["auto"][0]).abs().max() > 0


def test_own_cuda_stream_trains_like_the_default_one_beside_other_work(tiny_path: str) -> None:
    """trainer.cuda_stream=own (an in-process generator's kernels may run beside the trainer's): the same log-probs,
    update and handed-over weights as on the default stream, also while another thread keeps the default stream busy."""
    import threading

    batch = make_batch(6, seed=34)
    model = ModelSpec(tiny_path, max_seq_len=16)
    results = {}
    for stream in ("default", "own"):
        trainer = FSDPTrainer(FSDPTrainerConfig(lr=1e-3, max_tokens_per_micro_batch=40, cuda_stream=stream),
                              model=model, seed=0)  # fmt: skip
        stop = threading.Event()

        def busy(stop: threading.Event = stop) -> None:  # the default stream's other user (a generator's engine)
            x = torch.randn(2048, 2048, device="cuda")
            while not stop.is_set():
                x = torch.tanh(x @ x)
            torch.cuda.synchronize()

        worker = threading.Thread(target=busy)
        worker.start()
        try:
            assert (trainer.stream is not None) is (stream == "own")
            before = trainer.logprobs(batch)
            trainer.train_step(batch, pg_loss)
            weights = {name: tensor.float().clone() for name, tensor in trainer.named_weights()}
            results[stream] = (before, trainer.logprobs(batch), weights)
        finally:
            stop.set()
            worker.join()
            trainer.close()
    for own, default in zip(results["own"][:2], results["default"][:2], strict=True):
        torch.testing.assert_close(own, default, atol=0, rtol=0)
    assert results["own"][2].keys() == results["default"][2].keys()
    for name, tensor in results["own"][2].items():
        torch.testing.assert_close(tensor, results["default"][2][name], atol=0, rtol=0, msg=name)


def test_selective_checkpointing_on_gpu_matches_and_sits_between_in_memory(tiny_path: str) -> None:
    """activation_checkpointing=selective on CUDA (compiled layers, FlashAttention varlen kept): the update of no
    checkpointing (bf16), and peak memory of a step no higher than without checkpointing, no lower than full."""
    batch = make_batch(6, seed=39)
    model = ModelSpec(tiny_path, max_seq_len=16)
    weights, peaks = {}, {}
    for mode in (False, "selective", True):
        config = FSDPTrainerConfig(lr=1e-3, max_tokens_per_micro_batch=40, activation_checkpointing=mode)
        trainer = FSDPTrainer(config, model=model, seed=0)
        try:
            trainer.train_step(batch, pg_loss)  # compiles
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            trainer.train_step(batch, pg_loss)
            peaks[mode] = torch.cuda.max_memory_allocated() - base
            weights[mode] = {name: t.float().clone() for name, t in trainer.named_weights()}
        finally:
            trainer.close()
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights["selective"][name], tensor, atol=0.05, rtol=0, msg=name)
    assert peaks[True] <= peaks["selective"] <= peaks[False], peaks
