"""Data loading: toy problems, DeepScaleR/AIME-format files, malformed rows, prompt templates, hub ids."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rlx_math import toy
from rlx_math.data import MathDataError, builtin_template, load_problems, load_template
from rlx_math.env import MathEnvironment
from rlx_math.plugin import MathEnvConfig, ToyConfig

DATA = Path(__file__).parent / "data"


def _env(**options: object) -> MathEnvironment:
    return MathEnvironment(MathEnvConfig.model_validate({"num_workers": 0, **options}), seed=0)


# ------------------------------------------------------------------------------------------------ toy


def test_toy_evaluates_with_precedence() -> None:
    assert toy.evaluate([3, 4, 2], ["+", "*"]) == 11
    assert toy.evaluate([3, 4, 2], ["*", "-"]) == 10
    assert toy.evaluate([2, 3, 4, 5], ["-", "*", "+"]) == -5
    with pytest.raises(ValueError):
        toy.evaluate([1, 2], ["/"])


def test_toy_is_seeded_and_follows_difficulty() -> None:
    a = toy.generate(50, seed=7, num_operands=3, min_operand=10, max_operand=20, operators=["*"])
    assert a == toy.generate(50, seed=7, num_operands=3, min_operand=10, max_operand=20, operators=["*"])
    assert a != toy.generate(50, seed=8, num_operands=3, min_operand=10, max_operand=20, operators=["*"])
    for p in a:
        numbers = [int(x) for x in p.text.split("*")]
        assert len(numbers) == 3 and all(10 <= n <= 20 for n in numbers)
        assert int(p.answer) == numbers[0] * numbers[1] * numbers[2]
        assert p.solution == f"\\boxed{{{p.answer}}}"


def test_toy_env_default_splits_and_short_prompt() -> None:
    env = _env()
    train, val = env.problems("train"), env.problems("validation")
    assert len(train) == 2048 and len(val) == 64
    assert [p.messages for p in val] == [p.messages for p in _env().problems("validation")]
    assert [p.id for p in train[:2]] == ["toy-train-0", "toy-train-1"]
    first = train[0]
    (message,) = first.messages
    assert message["role"] == "user" and message["content"].endswith("=") and len(message["content"]) <= 12
    # the ideal completion (used by the core for a supervised warm-up) earns the full reward
    solutions = [p.metadata["solution"] for p in train[:32]]
    assert [s.reward for s in env.score(train[:32], solutions)] == [1.0] * 32
    # the distractors (the warm-up's deliberate slips) are well-formed and wrong
    distractors = [p.metadata["distractors"][0] for p in train[:32]]
    assert all(d.startswith("\\boxed{") for d in distractors)
    assert [s.status for s in env.score(train[:32], distractors)] == ["wrong"] * 32
    # the train set follows the run seed, the validation set does not
    other = MathEnvironment(MathEnvConfig(num_workers=0), seed=1)
    assert [p.messages for p in other.problems("train")] != [p.messages for p in train]
    assert [p.messages for p in other.problems("validation")] == [p.messages for p in val]


def test_toy_config_is_validated() -> None:
    with pytest.raises(ValueError, match="min_operand"):
        ToyConfig(min_operand=5, max_operand=2)
    with pytest.raises(ValueError):
        MathEnvConfig.model_validate({"toy": {"operators": ["/"]}})
    with pytest.raises(ValueError, match="extra"):
        MathEnvConfig.model_validate({"trian": "toy"})
    env = _env(toy={"train_size": 5, "validation_size": 0}, max_train_problems=3)
    assert len(env.problems("train")) == 3 and env.problems("validation") == []


# ------------------------------------------------------------------------------------------------ files


def test_deepscaler_jsonl_with_builtin_template() -> None:
    env = _env(train=str(DATA / "deepscaler_sample.jsonl"), validation=None)
    problems = env.problems("train")
    assert len(problems) == 6 and env.problems("validation") == []
    p = problems[1]
    assert p.answer == "\\frac{1}{4}" and p.id == "train-1"
    assert p.messages == (
        {
            "role": "user",
            "content": "Find the probability that a fair coin lands heads twice in two tosses. "
            "Let's think step by step and output the final answer within \\boxed{}.",
        },
    )
    assert p.metadata["reference_solution"].endswith("$.") and "solution" not in p.metadata
    assert "reference_solution" not in problems[5].metadata
    # the dataset's own solutions are graded correct against its answers
    sols = [p.metadata["reference_solution"] for p in problems[:5]]
    assert [s.status for s in env.score(problems[:5], sols)] == ["correct"] * 5


def test_aime_parquet_validation() -> None:
    env = _env(validation=str(DATA / "aime_2024_sample.parquet"), max_validation_problems=2)
    val = env.problems("validation")
    assert [p.answer for p in val] == ["204", "025"]
    assert val[0].metadata["row"] == 0 and "Aya" in val[0].messages[0]["content"]
    assert env.score(val, ["</think> so \\boxed{204}", "\\boxed{25}"])[1].reward == 1.0


def test_bad_rows_are_skipped_and_reported_with_row_numbers(caplog: pytest.LogCaptureFixture) -> None:
    source = str(DATA / "deepscaler_malformed.jsonl")
    with caplog.at_level(logging.WARNING, logger="rlx_math.data"):
        env = _env(train=source)
        problems = env.problems("train")
    assert [p.answer for p in problems] == ["4", "9", "6"]  # the integer answer 6 is kept as "6"
    report = env.reports["train"]
    assert report.rows == 6 and report.kept == 3
    assert [n for n, _ in report.bad_rows] == [1, 2, 4]
    assert "'answer'" in dict(report.bad_rows)[1] and "'problem'" in dict(report.bad_rows)[2]
    assert "skipped 3 malformed row(s) of 6" in caplog.text and "row 4:" in caplog.text


def test_bad_rows_fail_when_asked() -> None:
    env = _env(train=str(DATA / "deepscaler_malformed.jsonl"), on_bad_row="fail")
    with pytest.raises(MathDataError, match="malformed row 1 "):
        env.problems("train")


def test_broken_json_line_is_named(caplog: pytest.LogCaptureFixture) -> None:
    source = str(DATA / "broken_json.jsonl")
    with pytest.raises(MathDataError, match="line 2 is not valid JSON"):
        _env(train=source, on_bad_row="fail").problems("train")
    env = _env(train=source)
    assert [p.answer for p in env.problems("train")] == ["4", "10"]
    assert env.reports["train"].bad_rows[0][0] == 1


def test_missing_column_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MathDataError, match="no column 'Answer'; columns are .*'answer'"):
        _env(train=str(DATA / "aime_2024_sample.parquet"), answer_field="Answer").problems("train")
    with pytest.raises(MathDataError, match="not found"):
        _env(train=str(tmp_path / "nope.jsonl")).problems("train")
    other = tmp_path / "x.jsonl"
    other.write_text(json.dumps({"Problem": "1+1?", "Answer": 2}) + "\n")
    env = _env(train=str(other), problem_field="Problem", answer_field="Answer")
    assert env.problems("train")[0].answer == "2"


def test_hub_ids_go_to_datasets_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path: str, split: str) -> datasets.Dataset:
        calls.append((path, split))
        return datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2", "solution": "\\boxed{2}"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    env = _env(train="deepscaler", validation="aime2024")
    assert env.problems("train")[0].answer == "2" and env.problems("validation")[0].answer == "2"
    assert calls == [("agentica-org/DeepScaleR-Preview-Dataset", "train"), ("HuggingFaceH4/aime_2024", "train")]

    def offline(path: str, split: str) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MathDataError, match="cannot load hub dataset 'org/name'.*local .jsonl"):
        _env(train="org/name").problems("train")


# ------------------------------------------------------------------------------------------------ templates


def test_prompt_template_files(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("Solve: {problem}\nPut the answer in \\boxed{}.\n")
    env = _env(prompt_template=str(text))
    assert env.problems("train")[0].messages[0]["content"].startswith("Solve: ")
    assert env.problems("train")[0].messages[0]["content"].endswith("\\boxed{}.")

    chat = tmp_path / "t.json"
    chat.write_text(json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{problem}"}]))
    msgs = load_template(str(chat)).render("2+2")
    assert msgs == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2"})

    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder")
    with pytest.raises(MathDataError, match=r"\{problem\}"):
        load_template(str(bad))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps([{"role": "robot", "content": "{problem}"}]))
    with pytest.raises(MathDataError, match="roles"):
        load_template(str(bad_json))
    assert builtin_template("deepscaler").render("Q")[0]["content"] == (
        "Q Let's think step by step and output the final answer within \\boxed{}."
    )


def test_load_problems_keeps_counting_past_the_limit() -> None:
    from rlx_math.data import PromptTemplate

    template = PromptTemplate(({"role": "user", "content": "{problem}"},))
    problems, report = load_problems(
        str(DATA / "deepscaler_malformed.jsonl"), split="train", template=template, id_prefix="t", max_problems=1
    )
    assert len(problems) == 1 and report.rows == 6 and len(report.bad_rows) == 3


def test_local_copy_of_a_hub_dataset_folder(tmp_path: Path) -> None:
    import shutil

    (tmp_path / "data").mkdir()
    shutil.copy(DATA / "aime_2024_sample.parquet", tmp_path / "data" / "train-00000-of-00001.parquet")
    env = _env(validation=str(tmp_path), validation_split="train")
    assert [p.answer for p in env.problems("validation")] == ["204", "025", "540"]


def test_missing_template_fails_when_the_environment_is_built(tmp_path: Path) -> None:
    with pytest.raises(MathDataError, match="prompt_template: file not found"):
        _env(prompt_template=str(tmp_path / "missing.txt"))
