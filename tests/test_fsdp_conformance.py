"""The builtin `fsdp` trainer passes `rlx.testing.TrainerConformance`, with padded and with packed micro-batches."""

from __future__ import annotations

import pytest

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.builtin.fsdp_trainer import FSDPTrainer
from rlx.interfaces import ModelSpec
from rlx.testing import TrainerConformance


def fsdp_factory(**options: object):
    def make(model: ModelSpec) -> FSDPTrainer:
        config = FSDPTrainerConfig(**{"lr": 1e-3, "device": "cpu", "cpu_threads": 1, **options})
        return FSDPTrainer(config, model=model, seed=0)

    return make


class TestFSDPPaddedRows(TrainerConformance):
    @pytest.fixture(scope="class")
    def make_trainer(self):
        return fsdp_factory(micro_batch_size=2)


class TestFSDPPacked(TrainerConformance):
    @pytest.fixture(scope="class")
    def make_trainer(self):
        # 64 tokens per train micro-batch (rows of 5-20 tokens: several micro-batches), the logprobs pass in one
        return fsdp_factory(max_tokens_per_micro_batch=64, logprob_max_tokens_per_micro_batch=256)
