"""`LocalTrainerGroup` with 2 gloo ranks on CPU vs one in-process `fsdp` trainer: same updates, resharded
checkpoints, streamed weights, and worker failures that surface in the driver without a hang."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.cluster.base import TrainerWorkerError
from rlx.cluster.local import LocalTrainerGroup
from rlx.grpo.losses import policy_loss
from rlx.interfaces import ModelSpec, TrainBatch
from rlx.plan import Choice
from rlx.registry import BuildContext
from tests.test_fsdp_trainer import EXACT, assert_same_weights, hf_logprobs, make_batch, pg_loss


def failing_loss(new_logprobs: torch.Tensor, batch: TrainBatch, *, how: str) -> tuple[torch.Tensor, dict]:
    """Fails on rank 1 only (its peer is then stuck in a collective): raises, or kills the process."""
    import torch.distributed as dist

    if dist.get_rank() == 1:
        if how == "raise":
            raise ValueError("boom from the loss")
        os._exit(3)
    return pg_loss(new_logprobs, batch)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlx.models.tiny import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny"), seed=0, tie_word_embeddings=True)


def make_group(path: str, world_size: int, **options: object) -> LocalTrainerGroup:
    config = FSDPTrainerConfig(
        **{"lr": 1e-2, "grad_clip": 1.0, "micro_batch_size": 2, "device": "cpu", **EXACT, **options}
    )
    return LocalTrainerGroup(
        Choice.named("trainer", "fsdp", config),
        BuildContext(seed=0, model=ModelSpec(path, max_seq_len=16), with_reference=True),
        world_size=world_size, timeout_s=300,
    )


# 2 ranks pack their token-balanced shards (up to 3 sequences of 8-16 tokens per micro-batch); 1 rank pads rows
PACKED = {"max_tokens_per_micro_batch": 40, "micro_batch_size": None}


def with_old_and_ref(group: LocalTrainerGroup, batch: TrainBatch) -> TrainBatch:
    """The batch as the GRPO loop builds it: pi_old and reference log-probabilities from the trainer."""
    old = group.logprobs(batch)
    ref = group.logprobs(batch, reference=True)
    return TrainBatch(**{**batch.__dict__, "old_logprobs": old, "ref_logprobs": ref})


@pytest.mark.slow
@pytest.mark.parametrize("pair_options", [{}, PACKED], ids=["rows", "packed"])
def test_two_ranks_match_one_rank(tiny_path: str, tmp_path: Path, pair_options: dict) -> None:
    """Even (4 rows), uneven (3 rows, then 1 row: an empty shard) and long-tailed (6 rows: unequal micro-batch
    counts before the ranks agree) batches, GRPO loss with a KL term; then a checkpoint written by 2 ranks loads
    into 1 and continues identically, and their HF export matches. Packed: the 2 ranks pack, the 1 rank pads."""
    from transformers import AutoModelForCausalLM

    loss_fn = functools.partial(policy_loss, kl_coef=0.1)
    steps = [make_batch(4, seed=20), make_batch(3, seed=21), make_batch(1, seed=22), make_batch(6, seed=24)]
    single = make_group(tiny_path, 1)
    pair = make_group(tiny_path, 2, **pair_options)
    try:
        for batch in steps:
            batch_1, batch_2 = with_old_and_ref(single, batch), with_old_and_ref(pair, batch)
            torch.testing.assert_close(batch_2.old_logprobs, batch_1.old_logprobs, atol=1e-5, rtol=0)
            torch.testing.assert_close(batch_2.ref_logprobs, batch_1.ref_logprobs, atol=1e-5, rtol=0)
            metrics_1 = single.train_step(batch_1, loss_fn)
            metrics_2 = pair.train_step(batch_2, loss_fn)
            assert metrics_2.keys() == metrics_1.keys()
            for key, value in metrics_1.items():
                assert metrics_2[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
        weights_1 = {name: t.clone() for name, t in single.named_weights()}
        weights_2 = dict(pair.named_weights())
        assert_same_weights(weights_1, weights_2)
        assert all(t.device.type == "cpu" for t in weights_2.values())

        # stopping a stream early leaves the group usable
        first = next(iter(pair.named_weights()))
        assert first[0] == next(iter(weights_2))
        torch.testing.assert_close(pair.logprobs(steps[0]), single.logprobs(steps[0]), atol=1e-5, rtol=0)

        pair.save_checkpoint(str(tmp_path / "ckpt"))
        pair.export_hf(str(tmp_path / "hf"))  # rank 0 writes what all ranks gathered
        after = make_batch(4, seed=23)
        expected = pair.train_step(with_old_and_ref(pair, after), loss_fn)
        expected_weights = dict(pair.named_weights())
    finally:
        pair.close()
        single.close()
    resumed = make_group(tiny_path, 1)
    try:
        resumed.load_checkpoint(str(tmp_path / "ckpt"))
        exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
        torch.testing.assert_close(hf_logprobs(exported, after), resumed.logprobs(after), atol=1e-5, rtol=0)
        got = resumed.train_step(with_old_and_ref(resumed, after), loss_fn)
        assert_same_weights(expected_weights, dict(resumed.named_weights()))
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    finally:
        resumed.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_failing_rank_is_reported_by_rank_and_call(tiny_path: str, how: str) -> None:
    group = make_group(tiny_path, 2)
    procs = list(group._procs)
    try:
        with pytest.raises(TrainerWorkerError) as info:
            group.train_step(make_batch(4), functools.partial(failing_loss, how=how))
        message = str(info.value)
        # the failure itself was reported: the peer stuck in a collective did not leave the driver waiting for
        # the group's deadline
        assert "took longer than" not in message
        assert "rank 1" in message.splitlines()[0] and "train_step" in message  # root cause first
        assert ("boom from the loss" in message) if how == "raise" else ("exit code 3" in message)
        with pytest.raises(TrainerWorkerError, match="failed earlier"):
            group.logprobs(make_batch(2))
    finally:
        group.close()
    assert len(procs) == 2 and not any(proc.is_alive() for proc in procs)
