"""Per-step breakdown of full GRPO steps (generate, score, pi_old logprobs, train, weight push, sleep/wake) with
any generator plugin and the `fsdp` trainer, through the real GRPO loop.

    # on a GPU: a Qwen2.5-1.5B-shaped model with random weights, 16 prompts x 8 samples x 512 tokens
    python benchmarks/grpo_step.py --generator vllm --steps 4 --out grpo_vllm.json
    # on this CPU: the tiny model
    python benchmarks/grpo_step.py --generator hf --tiny --new-tokens 32 --steps 3

Rewards are random (seeded) so every group has signal; completions run to `--new-tokens` (a random-weight model
almost never samples EOS). Prints a table (one row per step, plus the median) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.table import Table

from rlx import hookimpl
from rlx.config import build_config
from rlx.interfaces import ModelSpec, Problem, Score

QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6)


class RandomRewardEnv:
    """Problems whose prompts are about `prompt_chars` characters; a coin flip per completion as the reward."""

    def __init__(self, n: int, prompt_chars: int, seed: int) -> None:
        rng = random.Random(seed)
        words = ["alpha", "beta", "gamma", "delta", "sum", "of", "the", "numbers", "is", "what"]
        self._problems = [
            Problem(id=f"p{i}", messages=({"role": "user", "content": " ".join(
                rng.choice(words) for _ in range(prompt_chars // 6))},), answer="0")
            for i in range(n)
        ]
        self._rng = random.Random(seed + 1)

    def problems(self, split: str) -> list[Problem]:
        return self._problems if split == "train" else []

    def score(self, problems, completions) -> list[Score]:
        return [Score(1.0, "correct") if self._rng.random() < 0.5 else Score(0.0, "wrong") for _ in completions]

    def close(self) -> None:
        pass


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@hookimpl
def register_environments(registry) -> None:  # noqa: ANN001
    registry.add("random-reward", config=_NoOptions, factory=f"{__name__}:make_random_reward_env")


def make_random_reward_env(config: _NoOptions, *, seed: int) -> RandomRewardEnv:
    return RandomRewardEnv(256, 600, seed)


def build_model(folder: Path, tiny: bool) -> str:
    from rlx.models.tiny import build_tokenizer, default_corpus, tiny_model

    if tiny:
        return tiny_model(folder)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(default_corpus())
    config = Qwen2Config(**QWEN25_15B, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    del model
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="vllm")
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU model instead of the 1.5B shape")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--prompt-chars", type=int, default=600)
    ap.add_argument("--mini-batch", type=int, default=0, help="sequences per optimizer step (0 = all: one step)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--model", default=None, help="use this HF folder instead of building one")
    ap.add_argument("--out", default=None, help="write JSON here")
    ap.add_argument("--plugin", action="append", default=[],
                    help="register this plugin module in-process (for hosts where the plugin is not pip-installed)")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides (e.g. generator.gpu_memory_utilization=0.4)")
    args = ap.parse_args(argv)

    import importlib

    from rlx.cluster import build_components
    from rlx.data import PromptEncoder
    from rlx.loop import GRPOLoop
    from rlx.models import load_tokenizer
    from rlx.plan import resolve_plan
    from rlx.plugins import add_plugin
    from rlx.registry import BuildContext
    from rlx.run import quiet_libraries

    for module in args.plugin:
        add_plugin(importlib.import_module(module), module)
    add_plugin(sys.modules[__name__], "grpo-step-benchmark")  # registers the random-reward environment below
    quiet_libraries()
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="rlx-grpo-bench-"))
    t = time.perf_counter()
    model_path = args.model or build_model(work / "model", args.tiny)
    console.print(f"model ready in {time.perf_counter() - t:.1f}s: {model_path}")
    total = args.prompts * args.generations
    overrides = [
        f"model.path={model_path}", f"model.max_seq_len={args.new_tokens + 4 * args.prompt_chars}",
        f"grpo.prompts_per_step={args.prompts}", f"grpo.num_generations={args.generations}",
        f"grpo.mini_batch_size={args.mini_batch or total}", f"grpo.max_new_tokens={args.new_tokens}",
        f"trainer.micro_batch_size={args.micro_batch}", "trainer.lr=1e-6", *args.overrides,
    ]
    cfg = build_config(None, overrides, generator=args.generator, trainer="fsdp", env="random-reward")
    plan = resolve_plan(cfg)
    env = RandomRewardEnv(max(args.prompts * (args.steps + 1), 64), args.prompt_chars, seed=0)
    spec = ModelSpec(path=model_path, dtype=cfg.model.dtype, max_seq_len=cfg.model.max_seq_len)
    t = time.perf_counter()
    components = build_components(plan.selection, cfg.cluster, BuildContext(seed=cfg.seed, model=spec), env)
    build_s = time.perf_counter() - t
    tokenizer = load_tokenizer(spec)
    loop = GRPOLoop(generator=components.generator, trainer=components.trainer, env=env,
                    encoder=PromptEncoder(tokenizer, spec.max_seq_len), grpo=cfg.grpo, validation=cfg.validation,
                    seed=0, pad_id=tokenizer.pad_token_id, train_problems=env.problems("train"))
    rows = []
    try:
        # the first step pays one-off costs (compilation, allocator warm-up): reported, not in the median
        for _ in range(args.steps):
            result = loop.run_step()
            m = result.metrics
            m["completion_tokens"] = m["throughput/completion_tokens_per_s"] * m["time/step"]
            rows.append(m)
            console.print(f"step {result.step}: {m['time/step']:.2f}s")
    finally:
        components.close()
    keys = ["time/generate", "time/score", "time/logprobs", "time/train", "time/weight_sync", "time/sleep",
            "time/wake_up", "time/step", "throughput/completion_tokens_per_s"]
    table = Table(title=f"GRPO step: {args.generator} + fsdp, {args.prompts}x{args.generations}x{args.new_tokens} "
                        f"({'tiny' if args.tiny else 'Qwen2.5-1.5B shape'})")
    table.add_column("step")
    for k in keys:
        table.add_column(k.split("/")[-1])
    for i, m in enumerate(rows, 1):
        table.add_row(str(i), *(f"{m.get(k, float('nan')):.3f}" if "throughput" not in k else f"{m[k]:.0f}" for k in keys))
    steady = rows[1:] or rows
    median = {k: statistics.median(m.get(k, 0.0) for m in steady) for k in keys}
    table.add_row("median (2..)", *(f"{median[k]:.3f}" if "throughput" not in k else f"{median[k]:.0f}" for k in keys))
    console.print(table)
    console.print(f"component start-up: {build_s:.1f}s; logprob_mismatch (last step): {rows[-1]['logprob_mismatch']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "build_s": build_s, "steps": rows,
                                              "median_steady": median}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
