"""The embedded default model (`model.path: builtin:tiny`): a tiny Qwen2-shaped model built on this machine,
with a tokenizer trained on the environment's own problems and a short supervised warm-up on the
environment's reference solutions, cached on disk after the first build.

Why a warm-up: like DeepScaleR, which starts RL from a distilled model that already solves some problems,
GRPO needs a nonzero reward to start from. Two kinds, chosen by what the environment's problems carry:

- `metadata["distractors"]` (wrong completions of the right form, e.g. the toy task's near-miss answers): the
  warm-up trains on a noisy mix, the reference solution with probability `1 - noise` and a random distractor
  otherwise, for a fixed number of steps. The result writes well-formed answers but is unreliable (it samples
  the right one about `1 - noise` of the time): the state of a distilled model GRPO is meant to sharpen.
- otherwise: the reference solutions only, stopping as soon as sampled accuracy reaches `target_accuracy`.

Multi-turn environments (with `start_episode`) give `metadata["demonstration"]` instead of a solution: a whole
dialogue after the prompt as chat messages (the model's turns as "assistant" messages, the environment's answers
between them), and their distractors are dialogues too. The warm-up lays a dialogue out as tokens exactly as a
rollout will (`rlx.chat.ChatTokens`) and trains on the assistant turns only; accuracy is measured on episodes.

Either way the starting accuracy is low on purpose, so the rise after it is GRPO's doing; `rlx run` prints the
reward at its first step, and `warmup.json` in the cached folder records how the warm-up went.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlx.errors import ConfigError
from rlx.interfaces import Environment, EpisodeEnvironment, Message, Problem

Target = str | list[Message]
"""A warm-up target: a completion (single-turn) or a dialogue after the prompt (multi-turn)."""

BUILTIN_MODELS = ("tiny",)
WARMUP_VERSION = "3"


def cache_root() -> Path:
    return Path(os.environ.get("RLX_CACHE") or Path.home() / ".cache" / "rlx")


def _chat_text(tokenizer: Any, problem: Problem, solution: Target | None) -> str:
    if isinstance(solution, list):
        return tokenizer.apply_chat_template([*problem.messages, *solution], add_generation_prompt=False,
                                             tokenize=False)
    text = tokenizer.apply_chat_template(list(problem.messages), add_generation_prompt=True, tokenize=False)
    return text + (solution + tokenizer.eos_token if solution is not None else "")


def reference(problem: Problem) -> Target:
    """What the warm-up imitates for `problem`: its demonstration dialogue if it has one, else its solution."""
    return problem.metadata.get("demonstration") or problem.metadata["solution"]


def _fingerprint_row(problem: Problem) -> list[Any]:
    row = [problem.messages, problem.metadata.get("solution"), problem.metadata.get("distractors")]
    demonstration = problem.metadata.get("demonstration")
    return [*row, demonstration] if demonstration else row  # single-turn caches keep their key


def ensure_embedded_model(
    name: str,
    env: Environment,
    *,
    seed: int = 0,
    console: Any = None,
    target_accuracy: float = 0.25,
    max_warmup_steps: int = 400,
    noise: float = 0.7,
    noisy_steps: int = 300,
) -> Path:
    """The folder of builtin model `name`, built (and warmed up on `env`) on first use, then reused."""
    if name not in BUILTIN_MODELS:
        raise ConfigError(f"unknown builtin model 'builtin:{name}'. Available: {', '.join('builtin:' + m for m in BUILTIN_MODELS)}")
    problems = [p for p in env.problems("train") if p.metadata.get("solution") or p.metadata.get("demonstration")]
    if not problems:
        raise ConfigError(
            "model.path builtin:tiny needs an environment whose training problems carry metadata['solution'] "
            "(a reference completion for the warm-up) or, for multi-turn environments, metadata['demonstration'] "
            "(a reference dialogue as chat messages), e.g. --env math with its default toy task, or --env guess"
        )
    from rlx.models.tiny import TINY_VERSION

    fingerprint = json.dumps(
        [TINY_VERSION, WARMUP_VERSION, seed, target_accuracy, noise, noisy_steps, [_fingerprint_row(p) for p in problems[:256]]],
        sort_keys=True,
    )
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    target = cache_root() / f"embedded-tiny-{key}"
    if (target / "warmup.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".embedded-", dir=target.parent))
    try:
        _say(console, f"building the embedded tiny model (first run only; cached in {target}) ...")
        report = build_and_warm_up(staging, env, problems, seed=seed, target_accuracy=target_accuracy,
                                   max_steps=max_warmup_steps, noise=noise, noisy_steps=noisy_steps, console=console)
        (staging / "warmup.json").write_text(json.dumps(report, indent=2))
        try:
            staging.rename(target)
        except OSError:
            if not (target / "warmup.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_and_warm_up(
    out_dir: Path,
    env: Environment,
    problems: Sequence[Problem],
    *,
    seed: int,
    target_accuracy: float,
    max_steps: int,
    noise: float = 0.7,
    noisy_steps: int = 300,
    console: Any = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    eval_every: int = 2,
) -> dict[str, Any]:
    """Tokenizer + random tiny Qwen2, then the warm-up described in the module docstring."""
    from transformers import AutoModelForCausalLM

    from rlx.models.tiny import build_tiny_qwen2, build_tokenizer
    from rlx.threads import cpu_threads

    rng = random.Random(seed)
    # the tokenizer learns the environment's vocabulary: chat-formatted prompts with their solutions
    from rlx.models.tiny import CHAT_TEMPLATE

    probe = _TemplateOnly(CHAT_TEMPLATE)
    corpus = [_chat_text(probe, p, reference(p)) for p in problems[:2000]]
    corpus += [_chat_text(probe, p, d) if isinstance(d, list) else d
               for p in problems[:200] for d in p.metadata.get("distractors", ())]
    tokenizer = build_tokenizer(corpus, vocab_size=384)
    build_tiny_qwen2(out_dir, tokenizer, hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                     intermediate_size=384, max_position_embeddings=512, seed=seed)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    held_out = list(problems[-64:])
    train = list(problems[:-64]) or list(problems)
    pad_id = tokenizer.pad_token_id
    history = []
    episodes = isinstance(env, EpisodeEnvironment)
    if episodes:  # accuracy on whole episodes, through the same collector and generator a run uses
        measure = _EpisodeAccuracy(out_dir, model, tokenizer, env, seed)
        eval_every = max(eval_every, 10)
    else:
        measure = functools.partial(_sampled_accuracy, model, tokenizer, env)
    accuracy = measure(held_out, seed)
    history.append({"step": 0, "accuracy": accuracy})
    t0 = time.time()
    step = 0
    noisy = all(p.metadata.get("distractors") for p in train)
    if noisy:
        eval_every = max(eval_every, noisy_steps // 6)

    def keep_going() -> bool:
        return step < noisy_steps if noisy else (accuracy < target_accuracy and step < max_steps)

    while keep_going():  # one thread: a tiny model's ops are too small to split (see rlx.threads)
        batch = rng.sample(train, min(batch_size, len(train)))
        targets = [
            rng.choice(p.metadata["distractors"]) if noisy and rng.random() < noise else reference(p)
            for p in batch
        ]
        input_ids, labels = _sft_batch(tokenizer, batch, targets, pad_id)
        with cpu_threads(torch.device("cpu"), 1):
            loss = model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long(), labels=labels).loss
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % eval_every == 0:
            model.eval()
            accuracy = measure(held_out, seed + step)
            model.train()
            history.append({"step": step, "accuracy": accuracy, "loss": float(loss.detach())})
            _say(console, f"  warm-up step {step}: loss {float(loss.detach()):.3f}, sampled accuracy {accuracy:.3f}")
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    if noisy and step % eval_every:
        accuracy = measure(held_out, seed + step)
    report = {"kind": "noisy" if noisy else "until-target", "noise": noise if noisy else 0.0,
              "warmup_steps": step, "sampled_accuracy": accuracy, "target_accuracy": target_accuracy,
              "seconds": time.time() - t0, "history": history}
    _say(console, f"embedded model ready: {step} warm-up steps, sampled accuracy {accuracy:.3f}")
    return report


class _TemplateOnly:
    """Renders the chat template without a tokenizer (the tokenizer is trained on the rendered text)."""

    eos_token = "<|im_end|>"

    def __init__(self, template: str) -> None:
        import jinja2

        self._t = jinja2.Environment().from_string(template)

    def apply_chat_template(self, messages, add_generation_prompt: bool, tokenize: bool) -> str:
        return self._t.render(messages=messages, add_generation_prompt=add_generation_prompt)


def _sft_batch(
    tokenizer: Any, problems: Sequence[Problem], targets: Sequence[Target], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input ids right-padded, and labels with -100 on prompt, observations and padding (loss on the
    model's turns only)."""
    rows, label_rows = [], []
    for p, target in zip(problems, targets, strict=True):
        prompt = tokenizer.apply_chat_template(list(p.messages), add_generation_prompt=True, tokenize=True, return_dict=False)
        row, labels = list(prompt), [-100] * len(prompt)
        for role, ids in _dialogue_pieces(tokenizer, target):
            row += ids
            labels += ids if role == "assistant" else [-100] * len(ids)
        rows.append(row)
        label_rows.append(labels)
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(lab)] = torch.tensor(lab)
    return ids, labels


def _dialogue_pieces(tokenizer: Any, target: Target) -> list[tuple[str, list[int]]]:
    """A target as token pieces in rollout order: ("assistant", turn ids + EOS) and ("observation", template ids)."""
    if isinstance(target, str):
        return [("assistant", tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])]
    from rlx.chat import ChatTokens

    chat, pieces, pending = ChatTokens(tokenizer), [], []
    for message in target:
        if message["role"] != "assistant":
            pending.append(message)
            continue
        if pending:
            pieces.append(("observation", chat.observation_ids(pending, tokenizer.eos_token_id)))
            pending = []
        pieces.append(("assistant", tokenizer(message["content"], add_special_tokens=False)["input_ids"]
                       + [tokenizer.eos_token_id]))
    return pieces


class _EpisodeAccuracy:
    """Mean episode reward of one temperature-1 episode per problem, with the `hf` generator following the model
    being warmed up (weights pushed in before each measurement) and the run's `EpisodeCollector`."""

    def __init__(self, folder: Path, model: Any, tokenizer: Any, env: Environment, seed: int) -> None:
        from rlx.builtin.configs import HFGeneratorConfig
        from rlx.builtin.hf_generator import HFGenerator
        from rlx.data import PromptEncoder
        from rlx.interfaces import ModelSpec
        from rlx.rollout import EpisodeCollector

        self.model = model
        self.generator = HFGenerator(HFGeneratorConfig(device="cpu", cpu_threads=1),
                                     model=ModelSpec(str(folder), dtype="float32"), seed=seed)
        self.collector = EpisodeCollector(self.generator, env, PromptEncoder(tokenizer, 256))

    def __call__(self, problems: Sequence[Problem], seed: int) -> float:
        from rlx.interfaces import SamplingParams

        self.generator.update_weights((name, p.detach()) for name, p in self.model.named_parameters())
        groups = self.collector.collect(problems, SamplingParams(n=1, temperature=1.0, max_new_tokens=24, seed=seed))
        return sum(s.score.reward for g in groups for s in g) / len(problems)


@torch.no_grad()
def _sampled_accuracy(model: Any, tokenizer: Any, env: Environment, problems: Sequence[Problem], seed: int) -> float:
    """Mean reward of one temperature-1 sample per problem (what GRPO's first step will see)."""
    from rlx.threads import cpu_threads

    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template(list(p.messages), add_generation_prompt=True, tokenize=False) for p in problems]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with cpu_threads(torch.device("cpu"), 1):
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=24,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    scores = env.score(list(problems), texts)
    return sum(s.reward for s in scores) / len(scores)


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message)
