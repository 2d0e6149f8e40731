"""Registers the `math` environment with rlx. Hook implementations and pydantic Config models only.

Cheap to import: no datasets, math_verify or torch here; the environment itself lives in `rlx_math.env`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import rlx
from rlx.registry import ComponentRegistry
from rlx.tools.python_sandbox import PythonToolConfig

# Short names for the two datasets of the DeepScaleR recipe (any other hub id or local path works too).
DATASET_ALIASES: dict[str, str] = {
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
    "aime2024": "HuggingFaceH4/aime_2024",
}


class ToyConfig(BaseModel):
    """Synthetic integer arithmetic (no download): `a op b op c ...` evaluated with the usual precedence."""

    model_config = ConfigDict(extra="forbid")

    num_operands: int = Field(2, ge=2, le=8, description="numbers per problem")
    min_operand: int = Field(0, ge=0, description="smallest operand")
    max_operand: int = Field(9, ge=0, description="largest operand")
    operators: list[Literal["+", "-", "*"]] = Field(["+", "-"], min_length=1, description="operators drawn from")
    train_size: int = Field(2048, gt=0, description="train problems (drawn with the run seed)")
    validation_size: int = Field(64, ge=0, description="validation problems (drawn with validation_seed)")
    validation_seed: int = Field(1234, description="fixed, so validation sets agree across runs with other seeds")

    @model_validator(mode="after")
    def _check_range(self) -> ToyConfig:
        if self.min_operand > self.max_operand:
            raise ValueError(f"min_operand ({self.min_operand}) must be <= max_operand ({self.max_operand})")
        return self


RESUME_SAFE = {"resume": "safe"}  # how grading runs, not what it computes: may change when a run resumes


class MathEnvConfig(BaseModel):
    """Options of the `math` environment (the `env:` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    train: str = Field(
        "toy",
        description="'toy' (synthetic arithmetic), 'deepscaler', a hub dataset id, or a local .jsonl/.parquet file",
    )
    train_split: str = Field("train", description="split name for hub datasets")
    validation: str | None = Field(
        "toy", description="'toy', 'aime2024', a hub dataset id, a local .jsonl/.parquet file, or null (none)"
    )
    validation_split: str = Field("train", description="split name for hub datasets (aime_2024 has only 'train')")
    problem_field: str = Field("problem", description="column holding the problem text")
    answer_field: str = Field("answer", description="column holding the gold answer (bare expression or LaTeX)")
    prompt_template: str | None = Field(
        None,
        description="path of a prompt template: a text file (the user message) or a JSON list of chat messages, "
        "with {problem} where the problem goes; null = builtin (DeepScaleR instruction; a short one for toy)",
    )
    on_bad_row: Literal["skip", "fail"] = Field(
        "skip", description="a malformed row is skipped and counted (with its row number in the log) or fails the run"
    )
    max_train_problems: int | None = Field(None, gt=0, description="keep only the first N train problems")
    max_validation_problems: int | None = Field(None, gt=0, description="keep only the first N validation problems")
    toy: ToyConfig = Field(default_factory=ToyConfig, description="settings of the toy arithmetic task")
    num_workers: int | None = Field(
        None, ge=0, description="verifier processes (null = usable CPUs, at most 16; 0 = in-process, no hard timeout)",
        json_schema_extra=RESUME_SAFE,
    )
    timeout_s: float = Field(
        10.0, gt=0, description="per-sample grading time limit (extraction + verification; math-verify: 5 + 5)",
        json_schema_extra=RESUME_SAFE,
    )
    kill_grace_s: float = Field(
        1.0, ge=0, description="extra time before a worker stuck in C code is killed (its sample: 'timeout')",
        json_schema_extra=RESUME_SAFE,
    )
    require_think_close: bool = Field(
        False,
        description="if true, a completion without '</think>' gets 'no_answer' (the DeepScaleR format rule); "
        "if false, the whole text is graded when '</think>' is absent",
    )
    fallback_tail_chars: int = Field(
        4000, gt=0, description="without a \\boxed{}, the last expression is searched in this many final characters"
    )
    fast_paths: bool = Field(
        True,
        description="decide easy and pathological answers without sympy (exact rationals, bounds, size limits); "
        "false sends every boxed answer to math-verify (slower, same verdicts except answers too large for sympy)",
    )
    tools: list[Literal["python"]] = Field(
        default_factory=list,
        description="tools the model may call in a multi-turn episode: 'python' runs its ```python blocks in a "
        "sandbox and answers with their output (empty: single-turn, no tools)",
    )
    max_tool_calls: int = Field(4, ge=0, description="tool calls per episode; the turn after the last is graded")
    python_tool: PythonToolConfig = Field(
        default_factory=PythonToolConfig, description="limits of one sandboxed Python call (when tools has 'python')"
    )
    start_method: Literal["forkserver", "spawn", "fork"] = Field(
        "forkserver", description="how verifier processes start ('fork' is unsafe once threads or CUDA exist)",
        json_schema_extra=RESUME_SAFE,
    )


@rlx.hookimpl
def register_environments(registry: ComponentRegistry) -> None:
    registry.add(
        "math",
        config=MathEnvConfig,
        factory="rlx_math.episodes:build_math_environment",
        description="competition math (DeepScaleR/AIME) or toy arithmetic; binary reward via math-verify; "
        "episodes with a sandboxed Python tool (tools: [python])",
        requires=("math_verify",),
        install_hint="pip install rlx-math",
    )
