"""The `math` environment: problems from toy arithmetic, DeepScaleR-format datasets or AIME, and a binary
math-verify reward computed in a pool of verifier processes with a per-sample time limit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlx.interfaces import Problem, Score, ScoreStatus, Split
from rlx_math import toy
from rlx_math.data import LoadReport, PromptTemplate, builtin_template, load_problems, load_template
from rlx_math.grading import FAST_PATHS, GradeOptions, Verdict, answer_key
from rlx_math.plugin import DATASET_ALIASES, MathEnvConfig
from rlx_math.pool import VerifierPool

logger = logging.getLogger(__name__)

GRADING_FAILED: frozenset[ScoreStatus] = frozenset({"no_answer", "timeout", "error"})


class AllGradingFailedWarning(RuntimeWarning):
    """Every completion of a batch scored 0 because nothing could be graded (not because it was wrong)."""


@dataclass(frozen=True)
class GradingStats:
    """What grading one `score` batch cost. Distinct (gold, final answer) pairs are graded once each.

    seconds: wall time of the whole `score` call; graded: distinct pairs; fast: pairs decided without sympy;
    timed_out: pairs that hit the time limit (the worker's timer or the pool's kill); by_path: pairs per
    deciding step (see `rlx_math.grading.Verdict`).
    """

    seconds: float = 0.0
    completions: int = 0
    graded: int = 0
    fast: int = 0
    timed_out: int = 0
    by_path: dict[str, int] = field(default_factory=dict)

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Flat numbers for a metrics logger, e.g. {"reward/grading_s": 0.8, "reward/timeouts": 0.0, ...}."""
        return {
            f"{prefix}grading_s": self.seconds,
            f"{prefix}graded": float(self.graded),
            f"{prefix}fast_fraction": self.fast / self.graded if self.graded else 0.0,
            f"{prefix}timeouts": float(self.timed_out),
            f"{prefix}sympy": float(self.by_path.get("sympy", 0)),
        }


MAX_DEFAULT_WORKERS = 16  # each verifier process holds sympy and antlr (~70 MB); GPU nodes have 100+ cores


def default_num_workers() -> int:
    """CPUs this process may run on (its affinity mask, not the whole machine), at most MAX_DEFAULT_WORKERS."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(available, MAX_DEFAULT_WORKERS))


class MathEnvironment:
    """Implements `rlx.interfaces.Environment`. Built as `MathEnvironment(config, seed=...)`."""

    def __init__(self, config: MathEnvConfig, *, seed: int) -> None:
        self.config = config
        self.seed = seed
        self._problems: dict[Split, list[Problem]] = {}
        self.reports: dict[Split, LoadReport] = {}
        self.counts: Counter[ScoreStatus] = Counter()  # every status ever returned by `score`
        self.paths: Counter[str] = Counter()  # every deciding step so far (per distinct pair)
        self.last_grading_stats = GradingStats()  # the last `score` batch; see `GradingStats.metrics()`
        self._lock = threading.Lock()  # the pool serves one batch at a time
        # a wrong template path fails now, before any model is loaded, not at the first problems() call
        self._custom_template = load_template(config.prompt_template) if config.prompt_template else None
        workers = config.num_workers if config.num_workers is not None else default_num_workers()
        self.pool = VerifierPool(
            workers,
            GradeOptions(
                timeout_s=config.timeout_s,
                require_think_close=config.require_think_close,
                fallback_tail_chars=config.fallback_tail_chars,
                fast_paths=config.fast_paths,
            ),
            kill_grace_s=config.kill_grace_s,
            start_method=config.start_method,
        )

    # ------------------------------------------------------------------------------------------ problems

    def problems(self, split: Split) -> Sequence[Problem]:
        """The train or validation problems (loaded once, then cached); validation may be empty."""
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        if split not in self._problems:
            self._problems[split] = self._load(split)
        return self._problems[split]

    def _template(self, source: str) -> PromptTemplate:
        if self._custom_template is not None:
            return self._custom_template
        return builtin_template("toy" if source == "toy" else "deepscaler")

    def _load(self, split: Split) -> list[Problem]:
        cfg = self.config
        source = cfg.train if split == "train" else cfg.validation
        limit = cfg.max_train_problems if split == "train" else cfg.max_validation_problems
        if source is None:
            return []
        template = self._template(source)
        if source == "toy":
            problems = self._toy(split, template)
            return problems[:limit] if limit else problems
        resolved = DATASET_ALIASES.get(source, source)
        problems, report = load_problems(
            resolved,
            split=cfg.train_split if split == "train" else cfg.validation_split,
            template=template,
            id_prefix=f"{split}",
            problem_field=cfg.problem_field,
            answer_field=cfg.answer_field,
            on_bad_row=cfg.on_bad_row,
            max_problems=limit,
        )
        self.reports[split] = report
        return problems

    def _toy(self, split: Split, template: PromptTemplate) -> list[Problem]:
        t = self.config.toy
        size, seed = (t.train_size, self.seed) if split == "train" else (t.validation_size, t.validation_seed)
        generated = toy.generate(
            size,
            seed=seed,
            num_operands=t.num_operands,
            min_operand=t.min_operand,
            max_operand=t.max_operand,
            operators=t.operators,
        )
        return [
            Problem(
                id=f"toy-{split}-{i}",
                messages=template.render(p.text),
                answer=p.answer,
                metadata={"source": "toy", "expression": p.text, "solution": p.solution,
                          "distractors": list(p.distractors)},
            )
            for i, p in enumerate(generated)
        ]

    # ------------------------------------------------------------------------------------------ scoring

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """Reward 1.0 if completions[i] answers problems[i] correctly (math-verify), else 0.0, with a status."""
        if len(problems) != len(completions):
            raise ValueError(f"score: {len(problems)} problems but {len(completions)} completions")
        start = time.perf_counter()
        options = self.pool.options
        pairs = [(p.answer, self._answer_key(c, options)) for p, c in zip(problems, completions, strict=True)]
        # GRPO samples each prompt several times and final answers repeat: grade each distinct one once
        unique = list(dict.fromkeys(pairs))
        with self._lock:
            verdicts = self.pool.grade_verdicts(unique)
        graded: dict[tuple[str, str], Verdict] = dict(zip(unique, verdicts, strict=True))
        scores = [Score(1.0 if graded[pair].status == "correct" else 0.0, graded[pair].status) for pair in pairs]
        paths = Counter(v.path for v in verdicts)
        self.paths.update(paths)
        self.last_grading_stats = GradingStats(
            seconds=time.perf_counter() - start,
            completions=len(pairs),
            graded=len(unique),
            fast=sum(n for path, n in paths.items() if path in FAST_PATHS),
            timed_out=sum(1 for v in verdicts if v.status == "timeout"),
            by_path=dict(paths),
        )
        statuses = Counter(s.status for s in scores)
        self.counts.update(statuses)
        if len(scores) >= 2 and all(s.status in GRADING_FAILED for s in scores):
            self._warn_all_failed(statuses, completions)
        return scores

    @staticmethod
    def _answer_key(completion: object, options: GradeOptions) -> str:
        if not isinstance(completion, str):
            return ""
        try:
            return answer_key(completion, options)
        except Exception:  # noqa: BLE001 - never let bad output crash the run: grade the whole text instead
            return completion

    def _warn_all_failed(self, statuses: Counter[ScoreStatus], completions: Sequence[str]) -> None:
        tail = (completions[0] or "")[-200:]
        message = (
            f"rlx-math: ALL {sum(statuses.values())} completions of this batch scored 0 because grading failed, "
            f"not because answers were wrong ({', '.join(f'{k}={v}' for k, v in sorted(statuses.items()))}). "
            f"Check that the prompt asks for \\boxed{{}} answers, that max_new_tokens lets the model finish, "
            f"and that timeout_s ({self.config.timeout_s}) is not too small. End of the first completion: {tail!r}"
        )
        logger.warning(message)
        warnings.warn(message, AllGradingFailedWarning, stacklevel=3)

    def stats(self) -> dict[str, int]:
        """Counters for logging: statuses and deciding steps so far, verifier processes started/killed/died."""
        return {
            **{f"status/{k}": v for k, v in self.counts.items()},
            **{f"path/{k}": v for k, v in self.paths.items()},
            **dict(self.pool.events),
        }

    def close(self) -> None:
        self.pool.close()
