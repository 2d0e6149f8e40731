"""Training data on the way in: chat messages -> prompt token ids (`PromptEncoder`), which problems fit the
model's context (`fitting_problems`), and where a run is in its data (`DataCursor`, exact on resume)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlx.errors import ConfigError
from rlx.interfaces import Environment, Problem, Split

log = logging.getLogger("rlx.data")


class PromptEncoder:
    """Chat messages -> prompt token ids (the model's chat template), completion ids -> text."""

    def __init__(self, tokenizer: Any, max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self._cache: dict[str, list[int]] = {}

    def encode(self, problem: Problem) -> list[int]:
        ids = self._cache.get(problem.id)
        if ids is None:
            ids = list(
                self.tokenizer.apply_chat_template(
                    list(problem.messages), add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
            self._cache[problem.id] = ids
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def fits(self, problem: Problem) -> bool:
        return len(self.encode(problem)) < self.max_seq_len

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def fitting_problems(env: Environment, encoder: PromptEncoder, split: Split, *, console: Any = None) -> list[Problem]:
    """The split's problems whose prompt leaves room for at least one completion token within model.max_seq_len.

    Dropped prompts are counted on the console; when every training prompt is too long that is an error naming
    the longest and shortest prompt and the setting to change."""
    problems = list(env.problems(split))
    kept = [p for p in problems if encoder.fits(p)]
    dropped = len(problems) - len(kept)
    if split == "train" and problems and not kept:
        lengths = [len(encoder.encode(p)) for p in problems]
        raise ConfigError(
            f"all {len(problems)} training prompts are too long for model.max_seq_len={encoder.max_seq_len} "
            f"(prompt + completion tokens): the shortest prompt has {min(lengths)} tokens, the longest {max(lengths)}. "
            f"Raise model.max_seq_len above {min(lengths)} (e.g. model.max_seq_len={max(lengths) + 256})"
        )
    if dropped:
        longest = max(len(encoder.encode(p)) for p in problems)
        message = (
            f"{dropped} of {len(problems)} {split} prompts are longer than model.max_seq_len={encoder.max_seq_len} "
            f"allows and were dropped (longest prompt: {longest} tokens)"
        )
        log.warning(message)
        if console is not None:
            console.print(f"[yellow]{message}[/yellow]")
    return kept


@dataclass
class DataCursor:
    """Where the run is in its training data: a seeded shuffle per epoch, so a resumed run sees the same order.

    It wraps to the next epoch instead of stopping, so a run resumed at an epoch boundary keeps training.
    """

    num_problems: int
    seed: int
    epoch: int = 0
    index: int = 0

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_problems, generator=g).tolist()

    def next_indices(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            order = self._order(self.epoch)
            take = min(count - len(out), self.num_problems - self.index)
            out.extend(order[self.index : self.index + take])
            self.index += take
            if self.index >= self.num_problems:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "num_problems": self.num_problems, "seed": self.seed}

    def load(self, state: dict[str, int]) -> None:
        if state.get("num_problems") != self.num_problems:
            log.warning(
                "training data changed since the checkpoint (%s -> %s problems): data order restarts at this epoch",
                state.get("num_problems"),
                self.num_problems,
            )
            self.epoch, self.index = int(state.get("epoch", 0)), 0
            return
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
