"""Problem sources: hub datasets and local JSONL/Parquet files in the DeepScaleR format, prompt templates.

Rows need a problem and a gold answer (column names configurable); a malformed row is reported with its
0-based row number and either skipped and counted, or fails the load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from rlx.errors import RlxError
from rlx.interfaces import Message, Problem

logger = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
PROBLEM_PLACEHOLDER = "{problem}"


class MathDataError(RlxError):
    """A dataset or prompt template cannot be used (missing file or column, malformed rows with on_bad_row=fail)."""


# ------------------------------------------------------------------------------------------------ templates


@dataclass(frozen=True)
class PromptTemplate:
    """Chat messages with `{problem}` where the problem text goes (in one or more messages)."""

    messages: tuple[Message, ...]

    def render(self, problem: str) -> tuple[Message, ...]:
        # str.replace, not str.format: templates contain LaTeX braces such as \boxed{}
        return tuple({**m, "content": m["content"].replace(PROBLEM_PLACEHOLDER, problem)} for m in self.messages)


def builtin_template(name: Literal["deepscaler", "toy"]) -> PromptTemplate:
    text = resources.files("rlx_math").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")
    return _text_template(text, f"builtin template '{name}'")


def _text_template(text: str, origin: str) -> PromptTemplate:
    text = text[:-1] if text.endswith("\n") else text  # editors add a final newline; the prompt should not
    if PROBLEM_PLACEHOLDER not in text:
        raise MathDataError(f"{origin}: the template must contain {PROBLEM_PLACEHOLDER} where the problem goes")
    return PromptTemplate(({"role": "user", "content": text},))


def load_template(path: str) -> PromptTemplate:
    """A text file (the user message) or a .json file holding a list of {"role", "content"} messages."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MathDataError(f"prompt_template: file not found: {path}")
    text = file.read_text(encoding="utf-8")
    if file.suffix != ".json":
        return _text_template(text, f"prompt_template {path}")
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MathDataError(f"prompt_template {path}: not valid JSON: {exc}") from exc
    roles = ("system", "user", "assistant")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and m.get("role") in roles and isinstance(m.get("content"), str) for m in messages
        )
    ):
        raise MathDataError(
            f"prompt_template {path}: expected a JSON list of messages like "
            f'[{{"role": "system", "content": "..."}}, {{"role": "user", "content": "{PROBLEM_PLACEHOLDER} ..."}}]'
            f" (roles: {', '.join(roles)})"
        )
    if not any(PROBLEM_PLACEHOLDER in m["content"] for m in messages):
        raise MathDataError(f"prompt_template {path}: no message contains {PROBLEM_PLACEHOLDER}")
    return PromptTemplate(tuple({"role": m["role"], "content": m["content"]} for m in messages))


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class LoadReport:
    """What a load kept and what it rejected: (0-based row number, reason) per bad row."""

    source: str
    rows: int = 0
    kept: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)


def is_local(source: str) -> bool:
    return source.endswith(LOCAL_SUFFIXES) or Path(source).expanduser().exists()


def _iter_rows(source: str, split: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(row number, row or None, why it is None) for each row of a hub dataset or local file."""
    import datasets

    path = Path(source).expanduser()
    if not is_local(source) or path.is_dir():
        # a hub id, or a local copy of a hub dataset (a folder holding its files)
        try:
            dataset = datasets.load_dataset(str(path) if path.is_dir() else source, split=split)
        except Exception as exc:
            raise MathDataError(
                f"cannot load {'dataset folder' if path.is_dir() else 'hub dataset'} '{source}' (split '{split}'): "
                f"{type(exc).__name__}: {exc}. Without hub access, pass a local .jsonl or .parquet file instead."
            ) from exc
        for number, row in enumerate(dataset):
            yield number, row, ""
        return
    if not path.is_file():
        raise MathDataError(f"data file not found: {source}")
    if path.suffix == ".parquet":
        try:
            dataset = datasets.Dataset.from_parquet(str(path))
        except Exception as exc:
            raise MathDataError(f"{source}: not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
        for number, row in enumerate(dataset):
            yield number, row, ""
        return
    if path.suffix not in (".jsonl", ".json"):
        raise MathDataError(f"{source}: unsupported file type '{path.suffix}' (use .jsonl or .parquet)")
    try:
        dataset = datasets.Dataset.from_json(str(path))
    except Exception:  # noqa: BLE001 - a broken line fails the whole Arrow load: read line by line to name it
        dataset = None
    if dataset is not None:
        for number, row in enumerate(dataset):
            yield number, row, ""
        return
    number = 0
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"line {line_no} is not valid JSON ({exc.msg})"
            else:
                if isinstance(row, dict):
                    yield number, row, ""
                else:
                    yield number, None, f"line {line_no} is a JSON {type(row).__name__}, not an object"
            number += 1


def _field_text(value: Any, *, allow_number: bool) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if allow_number and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # AIME answers are sometimes stored as integers
    return None


def load_problems(
    source: str,
    *,
    split: str,
    template: PromptTemplate,
    id_prefix: str,
    problem_field: str = "problem",
    answer_field: str = "answer",
    on_bad_row: Literal["skip", "fail"] = "skip",
    max_problems: int | None = None,
) -> tuple[list[Problem], LoadReport]:
    """Problems from a hub dataset or a local file, and a report of the rows that were rejected."""
    report = LoadReport(source=source)
    problems: list[Problem] = []
    checked_columns = False
    for number, row, why in _iter_rows(source, split):
        report.rows += 1
        if row is not None and not checked_columns:
            missing = [name for name in (problem_field, answer_field) if name not in row]
            if missing:
                raise MathDataError(
                    f"{source}: no column {', '.join(repr(m) for m in missing)}; columns are {sorted(row)}. "
                    "Set env.problem_field / env.answer_field to the right names."
                )
            checked_columns = True
        if row is not None:
            problem = _field_text(row.get(problem_field), allow_number=False)
            answer = _field_text(row.get(answer_field), allow_number=True)
            if problem is None or answer is None:
                empty = [name for name, value in ((problem_field, problem), (answer_field, answer)) if value is None]
                why = f"empty or non-text {' and '.join(repr(e) for e in empty)}"
        if why:
            report.bad_rows.append((number, why))
            if on_bad_row == "fail":
                raise MathDataError(
                    f"{source}: malformed row {number} (0-based): {why}. Fix the data or set env.on_bad_row=skip."
                )
            continue
        assert row is not None and problem is not None and answer is not None
        if max_problems is not None and len(problems) >= max_problems:
            continue  # keep counting rows so that bad rows further on are still reported
        metadata: dict[str, Any] = {"source": source, "row": number}
        solution = row.get("solution")
        if isinstance(solution, str) and solution.strip():
            # not "solution": that key is reserved for an ideal completion (used for supervised warm-up)
            metadata["reference_solution"] = solution
        problems.append(
            Problem(id=f"{id_prefix}-{number}", messages=template.render(problem), answer=answer, metadata=metadata)
        )
    report.kept = len(problems)
    if report.bad_rows:
        shown = "; ".join(f"row {n}: {w}" for n, w in report.bad_rows[:10])
        more = f" (and {len(report.bad_rows) - 10} more)" if len(report.bad_rows) > 10 else ""
        logger.warning(
            "rlx-math: skipped %d malformed row(s) of %d in %s: %s%s",
            len(report.bad_rows),
            report.rows,
            source,
            shown,
            more,
        )
    if not problems:
        raise MathDataError(f"{source}: no usable problems ({report.rows} rows, {len(report.bad_rows)} malformed)")
    return problems, report
