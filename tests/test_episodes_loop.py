"""`rlx run` on the builtin multi-turn `guess` environment with a fake generator (it always guesses 4) and a fake
trainer that records its batches: the loop takes the episode path, trains only on the model's tokens, validates
on episodes and reports the episode metrics. Seconds, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlx
from rlx.interfaces import Completion

from .test_loop_fakes import FakeGenerator, FakeTrainer, _Options

BATCHES: list = []
SEEN: list = []


class AlwaysFour(FakeGenerator):
    """Every turn is "4" + EOS: right at once when the secret is 4, else wrong after the last guess."""

    def __init__(self, config: _Options, *, model, seed: int) -> None:  # noqa: ANN001
        super().__init__(config, model=model, seed=seed)
        self.turn = tuple(self.tok("4", add_special_tokens=False)["input_ids"]) + (self.tok.eos_token_id,)

    def generate(self, prompts, params):  # noqa: ANN001, ANN201
        SEEN.append((len(prompts), params.n))
        return [[Completion(self.turn, (-0.25,) * len(self.turn), "stop")] * params.n for _ in prompts]


class RecordingTrainer(FakeTrainer):
    def train_step(self, batch, loss_fn, *, temperature: float = 1.0):  # noqa: ANN001, ANN201
        BATCHES.append(batch)
        return super().train_step(batch, loss_fn, temperature=temperature)


class EpisodeFakes:
    """The plugin: the two fakes above (the environment is the builtin `guess`)."""

    @rlx.hookimpl
    def register_generators(self, registry) -> None:  # noqa: ANN001
        registry.add("always-four", config=_Options, factory=f"{__name__}:AlwaysFour")

    @rlx.hookimpl
    def register_trainers(self, registry) -> None:  # noqa: ANN001
        registry.add("recording-trainer", config=_Options, factory=f"{__name__}:RecordingTrainer")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlx.models.tiny import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def test_run_on_a_multi_turn_environment_trains_on_model_tokens_only(register_plugin, model_dir, tmp_path):
    from rich.console import Console

    from rlx.config import build_config
    from rlx.plan import resolve_plan
    from rlx.run import run

    register_plugin(EpisodeFakes(), "episode-fakes")
    BATCHES.clear()
    SEEN.clear()
    cfg = build_config(None, [
        f"output_dir={tmp_path / 'run'}", f"model.path={model_dir}", "model.max_seq_len=128", "steps=2",
        "grpo.prompts_per_step=4", "grpo.num_generations=2", "grpo.mini_batch_size=8", "grpo.max_new_tokens=4",
        "env.validation_size=3", "validation.period=2", "checkpoint.export_hf=false", "logging.progress=false",
        "logging.tensorboard=false",
    ], generator="always-four", trainer="recording-trainer", env="guess")
    summary = run(resolve_plan(cfg), console=Console(quiet=True))

    # every guess prompt is the same text: a training round starts as one prompt sampled for all 8 episodes (4
    # problems x 2), and since the generator always says 4, the episodes' prefixes coincide in later rounds too
    assert SEEN.count((1, 8)) == 2 and (1, 3) in SEEN  # first rounds of the 2 steps; validation's 3 episodes
    rows = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines()]
    train = [r for r in rows if "reward/mean" in r]
    for row, batch in zip(train, BATCHES, strict=True):
        # each episode: 1 turn (secret 4, reward 1) or 3 (wrong); two model tokens ("4", EOS) per turn
        turns = batch.completion_mask.sum(dim=1) // 2
        assert set(turns.tolist()) <= {1, 3}
        assert row["reward/mean"] == pytest.approx(float((turns == 1).float().mean()))
        assert row["episode/turns_mean"] == pytest.approx(float(turns.float().mean()))
        # every masked-in token is a model token ("4" or EOS), never an observation token
        model_ids = set(batch.input_ids[batch.completion_mask].tolist())
        assert len(model_ids) == 2
        assert 0 < row["episode/observation_token_frac"] < 1 and row["score/wrong_frac"] + row["score/correct_frac"] == 1
    assert [r["step"] for r in rows if "val/accuracy" in r] == [0, 2]  # validation ran episodes too
