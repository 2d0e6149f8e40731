"""`rlx run` end to end with fake generator, trainer and environment (registered as an in-process plugin): the
loop's bookkeeping in seconds, no model. Data order, advantages reaching the trainer, one weight push per step,
validation and checkpoint periods, and a resume in the middle of an epoch that continues exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import rlx
from rlx.data import DataCursor
from rlx.grpo.advantages import group_advantages
from rlx.interfaces import Completion, Problem, Score

NUM_PROBLEMS = 10
LOG: dict[str, list] = {}


def _record(key: str, value: object) -> None:
    LOG.setdefault(key, []).append(value)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FakeEnv:
    """Problem i's answer is the text "i"; a completion is correct when it decodes to exactly that."""

    def __init__(self, config: _Options, *, seed: int) -> None:
        msgs = [({"role": "user", "content": f"say {i}"},) for i in range(NUM_PROBLEMS)]
        self._train = [Problem(f"p{i}", msgs[i], str(i)) for i in range(NUM_PROBLEMS)]
        self._val = [Problem(f"v{i}", msgs[i], str(i)) for i in range(3)]

    def problems(self, split):  # noqa: ANN001, ANN201
        return self._train if split == "train" else self._val

    def score(self, problems, completions):  # noqa: ANN001, ANN201
        scores = [Score(1.0 if c == p.answer else 0.0, "correct" if c == p.answer else "wrong")
                  for p, c in zip(problems, completions, strict=True)]
        _record("scored", [(p.id, s.reward) for p, s in zip(problems, scores, strict=True)])
        return scores

    def close(self) -> None:
        pass


class FakeGenerator:
    """Sample j of a prompt answers correctly when (j + number of pushes so far) is even: rewards vary in a group."""

    def __init__(self, config: _Options, *, model, seed: int) -> None:  # noqa: ANN001
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model.path)
        self.pushes = 0

    def generate(self, prompts, params):  # noqa: ANN001, ANN201
        _record("prompts", [tuple(p) for p in prompts])
        out = []
        for prompt in prompts:
            answer = self.tok.decode(prompt).split("say ")[1].split("<|im_end|>")[0]
            group = []
            for j in range(params.n):
                text = answer if (j + self.pushes) % 2 == 0 else "no"
                ids = tuple(self.tok(text, add_special_tokens=False)["input_ids"]) + (self.tok.eos_token_id,)
                group.append(Completion(ids, (-0.5,) * len(ids), "stop"))
            out.append(group)
        return out

    def update_weights(self, weights, **_) -> None:  # noqa: ANN001
        _record("pushed", [name for name, _ in weights])
        self.pushes += 1

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeTrainer:
    def __init__(self, config: _Options, *, model, seed: int, with_reference: bool) -> None:  # noqa: ANN001
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model.path)
        self.steps = 0

    def logprobs(self, batch, *, temperature: float = 1.0, reference: bool = False):  # noqa: ANN001, ANN201
        return torch.zeros(batch.input_ids.shape) - 0.5 * batch.completion_mask

    def train_step(self, batch, loss_fn, *, temperature: float = 1.0):  # noqa: ANN001, ANN201
        _record("advantages", batch.advantages.tolist())
        rows = zip(batch.input_ids, batch.attention_mask, strict=True)
        texts = self.tok.batch_decode([row[mask.bool()] for row, mask in rows])
        trained = sorted("p" + t.split("say ")[1].split("<|im_end|>")[0] for t in texts if "say " in t)
        if trained:  # subclasses train on other environments' prompts
            _record("trained", trained)
        self.steps += 1
        return {"loss": 0.0, "grad_norm": 1.0, "lr": 1e-3}

    def named_weights(self):  # noqa: ANN201
        yield "w", torch.full((2,), float(self.steps))

    def save_checkpoint(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "state.json").write_text(json.dumps({"steps": self.steps}))

    def load_checkpoint(self, path: str) -> None:
        self.steps = json.loads((Path(path) / "state.json").read_text())["steps"]

    def export_hf(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")

    def close(self) -> None:
        pass


@rlx.hookimpl
def register_generators(registry) -> None:  # noqa: ANN001
    registry.add("fake-gen", config=_Options, factory=f"{__name__}:FakeGenerator")


@rlx.hookimpl
def register_trainers(registry) -> None:  # noqa: ANN001
    registry.add("fake-trainer", config=_Options, factory=f"{__name__}:FakeTrainer")


@rlx.hookimpl
def register_environments(registry) -> None:  # noqa: ANN001
    registry.add("fake-env", config=_Options, factory=f"{__name__}:FakeEnv")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlx.models.tiny import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture
def fakes(register_plugin):  # noqa: ANN001, ANN201
    import sys

    register_plugin(sys.modules[__name__], "loop-fakes")
    LOG.clear()
    return LOG


def _run(out: Path, model_dir: str, steps: int, *extra: str) -> dict:
    from rlx.config import build_config
    from rlx.plan import resolve_plan
    from rlx.run import run

    cfg = build_config(None, [
        f"output_dir={out}", f"model.path={model_dir}", "model.max_seq_len=64", f"steps={steps}",
        "grpo.prompts_per_step=4", "grpo.num_generations=2", "grpo.mini_batch_size=4", "grpo.max_new_tokens=4",
        "validation.period=2", "checkpoint.period=2", "checkpoint.export_hf=true", "logging.progress=false",
        "logging.tensorboard=false", *extra,
    ], generator="fake-gen", trainer="fake-trainer", env="fake-env")
    from rich.console import Console

    return run(resolve_plan(cfg), console=Console(quiet=True))


def _train_prompt_ids(tok, log: dict) -> list[str]:  # noqa: ANN001
    """Problem ids in the order the generator saw them in training calls (4 prompts; validation calls have 3)."""
    ids = []
    for call in log["prompts"]:
        if len(call) == 4:
            ids += ["p" + tok.decode(p).split("say ")[1].split("<|im_end|>")[0] for p in call]
    return ids


def test_steps_follow_the_data_order_and_push_once_per_step(fakes, model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    summary = _run(tmp_path / "run", model_dir, 5)

    cursor = DataCursor(NUM_PROBLEMS, seed=0)
    expected = [f"p{i}" for i in cursor.next_indices(5 * 4)]  # crosses into the second epoch
    assert _train_prompt_ids(tok, fakes) == expected
    assert len(fakes["pushed"]) == 5 and all(p == ["w"] for p in fakes["pushed"])

    # validation at step 0 and every 2 steps (and the last): 3 validation problems each time
    rows = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines()]
    assert [r["step"] for r in rows if "val/accuracy" in r] == [0, 2, 4, 5]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2, 3, 4, 5]
    # sample j is right when j + pushes is even: each group has one right and one wrong answer
    assert all(r["reward/mean"] == 0.5 and r["reward/solved_frac"] == 0.5 for r in rows if "reward/mean" in r)
    # checkpoints at 2 and 4 (period) and 5 (last); the latest and the best are kept
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts[-1] == "step_00000005" and set(ckpts) <= {"step_00000002", "step_00000004", "step_00000005"}
    assert (tmp_path / "run" / "hf" / "config.json").is_file()


def test_advantages_reaching_the_trainer_are_the_group_advantages_of_the_rewards(fakes, model_dir, tmp_path):
    _run(tmp_path / "run", model_dir, 2, "validation.period=0", "grpo.mini_batch_size=8")  # one optimizer step
    for scored, advantages in zip(fakes["scored"], fakes["advantages"], strict=True):
        rewards = torch.tensor([r for _, r in scored]).view(4, 2)
        expected = group_advantages(rewards).flatten().tolist()
        assert sorted(advantages) == pytest.approx(sorted(expected))  # mini-batch order is shuffled
        assert set(advantages) != {0.0}


def test_resume_in_the_middle_of_an_epoch_continues_like_a_straight_run(fakes, model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    _run(tmp_path / "straight", model_dir, 5, "validation.period=0")
    straight = _train_prompt_ids(tok, fakes)
    LOG.clear()
    _run(tmp_path / "resumed", model_dir, 3, "validation.period=0")  # 12 of 10 problems: mid-epoch 1
    first = _train_prompt_ids(tok, fakes)
    LOG.clear()
    _run(tmp_path / "resumed", model_dir, 5, "validation.period=0")
    second = _train_prompt_ids(tok, fakes)
    # the last step (3) is checkpointed: the resumed run does steps 4 and 5, in the straight run's order
    assert first == straight[:12]
    assert second == straight[12:20]
    # on resume the generator first receives the checkpoint's weights, then one push per step
    assert len(fakes["pushed"]) == 1 + 2


def test_environment_contract_violation_names_the_plugin(fakes, model_dir, tmp_path, monkeypatch):
    from rlx.errors import ComponentError

    monkeypatch.setattr(FakeEnv, "score", lambda self, problems, completions: [Score(float("nan"), "wrong")] * len(problems))
    with pytest.raises(ComponentError, match=r"environment 'fake-env' \(from \(in-process\)\).*reward nan"):
        _run(tmp_path / "run", model_dir, 1, "validation.period=0")
    monkeypatch.setattr(FakeEnv, "score", lambda self, problems, completions: [Score(1.0, "correct")])
    with pytest.raises(ComponentError, match="returned 1 scores for 8 completions"):
        _run(tmp_path / "run2", model_dir, 1, "validation.period=0")




# ------------------------------------------------------------------------------------------------ asynchronous


def test_async_run_trains_the_same_prompts_one_step_off_and_logs_staleness(fakes, model_dir, tmp_path):
    _run(tmp_path / "sync", model_dir, 5, "grpo.mini_batch_size=8")
    sync_trained, sync_pushes = list(fakes["trained"]), len(fakes["pushed"])
    LOG.clear()
    summary = _run(tmp_path / "async", model_dir, 5, "grpo.mini_batch_size=8", "grpo.max_staleness=1")
    assert fakes["trained"] == sync_trained  # the same prompts, step by step
    assert len(fakes["pushed"]) == sync_pushes == 5
    rows = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    # batch 0 and 1 come from the first weights; batch b >= 1 from version b - 1: staleness 0, then always 1
    assert [r["async/staleness_max"] for r in steps] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [r["async/staleness_1_frac"] for r in steps] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert all(r["async/dropped_stale_groups"] == 0.0 for r in steps)
    assert [r["step"] for r in rows if "val/accuracy" in r] == [0, 2, 4, 5]  # validation pauses the producer


def test_async_resume_trains_every_prompt_once_in_the_straight_order(fakes, model_dir, tmp_path):
    """The producer has drawn a batch ahead when the run stops at step 3: the resumed run draws it again."""
    args = ("validation.period=0", "grpo.mini_batch_size=8", "grpo.max_staleness=1")
    _run(tmp_path / "straight", model_dir, 5, *args)
    straight = list(fakes["trained"])
    LOG.clear()
    _run(tmp_path / "resumed", model_dir, 3, *args)
    first = list(fakes["trained"])
    LOG.clear()
    _run(tmp_path / "resumed", model_dir, 5, *args)
    assert first + fakes["trained"] == straight
    assert len({p for step in straight for p in step}) == NUM_PROBLEMS  # 20 draws over 10 problems: 2 epochs


def test_a_synchronous_run_resumed_asynchronously_trains_the_same_prompts(fakes, model_dir, tmp_path):
    args = ("validation.period=0", "grpo.mini_batch_size=8")
    _run(tmp_path / "straight", model_dir, 5, *args)
    straight = list(fakes["trained"])
    LOG.clear()
    _run(tmp_path / "switched", model_dir, 3, *args)
    first = list(fakes["trained"])
    LOG.clear()
    _run(tmp_path / "switched", model_dir, 5, *args, "grpo.max_staleness=1")
    assert first + fakes["trained"] == straight
