"""Time to reward on the embedded task: `rlx run` (no arguments) beside TRL's GRPOTrainer on the same model,
starting weights, problems, batch and hyper-parameters. Prints a table and writes JSON.

    python benchmarks/time_to_reward.py                       # cold + warm rlx, then TRL (about 10-15 min)
    python benchmarks/time_to_reward.py --no-cold --trl-budget 300
    python benchmarks/time_to_reward.py --no-cold --skip-trl   # synchronous rlx beside grpo.max_staleness=1

"Time to target": seconds from process start (imports, model build/load, everything) to the GRPO step at which the
rolling mean of the training reward over the last `--window` steps first reaches `--target`; "loop" columns count
from the start of training instead. One GRPO step = 32 prompts x 8 samples = 256 completions, 2 optimizer steps.

TRL runs in its own virtualenv (`--trl-python`, default `.venv-trl/bin/python`; TRL is benchmark-only, never a
dependency of rlx): this same file, re-run with `--trl-worker`. The frameworks run one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "time_to_reward.json"
POLL_S = 0.1

# what still differs between the two runs (everything else is the same: model folder, problems, reward, batch,
# optimizer, clipping, advantage, loss aggregation, sampling settings, completion length, threads)
DIFFERENCES = [
    "data order: the same 2048 toy problems, but rlx draws them with its own seeded permutation per epoch and TRL "
    "with its RepeatSampler (seed = the run seed), so step k sees different prompts; sampling RNG streams differ too",
    "advantage eps: (r - mean) / (std + eps) with eps 1e-6 in rlx, 1e-4 in TRL (std is the unbiased group std in both)",
    "generation: rlx's `hf` generator vs TRL's model.generate (both: temperature 1, no top-k/top-p, 12 new tokens)",
    "stop: rlx runs at most the recipe's 160 steps (and --rlx-budget seconds); TRL runs until --trl-budget seconds",
    "single seed per run; the machine is shared, so s/step carries load noise from other processes",
]


# ------------------------------------------------------------------------------------------- shared helpers


def first_reaching(rewards: Sequence[float], target: float, window: int) -> int | None:
    """1-based index of the first step whose rolling mean over the last `window` steps is >= target (needs a
    full window), or None."""
    for i in range(window, len(rewards) + 1):
        if sum(rewards[i - window : i]) / window >= target:
            return i
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: the writer may be half-way through the last one."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGINT the process group we started (the run and its verifier worker), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def watch(
    cmd: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    steps_path: Path,
    reward_key: str,
    target: float,
    window: int,
    budget_s: float,
) -> dict[str, Any]:
    """Run `cmd`, tail its per-step JSONL, and stop it once the target is reached or the budget is spent.

    Each step's arrival time is taken when the line appears (polled every POLL_S), measured from process start.
    """
    t0 = time.time()
    arrivals: list[float] = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        reached = None
        while True:
            rows = read_jsonl(steps_path)
            now = time.time() - t0
            arrivals.extend([now] * (len(rows) - len(arrivals)))
            reached = first_reaching([float(r[reward_key]) for r in rows], target, window)
            if reached is not None or proc.poll() is not None or now > budget_s:
                break
            time.sleep(POLL_S)
        stop_group(proc)
    rows = read_jsonl(steps_path)
    arrivals.extend([time.time() - t0] * (len(rows) - len(arrivals)))
    return {
        "rows": rows,
        "arrivals": arrivals,
        "reached": reached,
        "returncode": proc.returncode,
        "elapsed_s": time.time() - t0,
    }


def summarise(name: str, res: dict[str, Any], reward_key: str, loop_time_key: str, window: int) -> dict[str, Any]:
    rows, reached = res["rows"], res["reached"]
    rewards = [float(r[reward_key]) for r in rows]
    loop_times = [float(r[loop_time_key]) for r in rows]
    n = len(rows)
    per_step = (loop_times[-1] - loop_times[0]) / (n - 1) if n > 1 else float("nan")
    return {
        "framework": name,
        "reached": reached is not None,
        "time_to_target_s": res["arrivals"][reached - 1] if reached else None,
        "loop_time_to_target_s": loop_times[reached - 1] if reached else None,
        "steps_to_target": reached,
        "steps_run": n,
        "s_per_step": per_step,
        "first_step_at_s": res["arrivals"][0] if n else None,
        "starting_reward": rewards[0] if rewards else None,
        "final_reward": rewards[-1] if rewards else None,
        "final_rolling_reward": sum(rewards[-window:]) / min(window, n) if n else None,
        "elapsed_s": res["elapsed_s"],
        "returncode": res["returncode"],
        "rewards": rewards,
    }


# ------------------------------------------------------------------------------------------------- rlx


def run_rlx(args: argparse.Namespace, work: Path, cache: Path, label: str, *extra: str) -> dict[str, Any]:
    out_dir = work / ("rlx-" + "-".join("".join(c if c.isalnum() else " " for c in label).split()))
    cmd = [
        args.rlx,
        "run",
        f"output_dir={out_dir}",
        "logging.progress=false",
        "checkpoint.export_hf=false",
        "validation.period=0",
        f"seed={args.seed}",
        *extra,
    ]
    env = {**os.environ, "RLX_CACHE": str(cache)}
    print(f"[rlx {label}] {' '.join(cmd)}  (RLX_CACHE={cache})", flush=True)
    res = watch(
        cmd,
        env=env,
        log_path=out_dir.with_suffix(".log"),
        steps_path=out_dir / "metrics.jsonl",
        reward_key="reward/mean",
        target=args.target,
        window=args.window,
        budget_s=args.rlx_budget,
    )
    summary = summarise(f"rlx ({label})", res, "reward/mean", "wall_time", args.window)
    summary["command"] = " ".join(["rlx", "run", "output_dir=<scratch>", *cmd[3:]])
    if not res["rows"]:
        print(out_dir.with_suffix(".log").read_text()[-3000:], file=sys.stderr)
    return summary


# ------------------------------------------------------------------------------------------------- TRL


def run_trl(args: argparse.Namespace, work: Path, cache: Path) -> dict[str, Any]:
    steps_path = work / "trl-steps.jsonl"
    cmd = [
        args.trl_python,
        str(Path(__file__).resolve()),
        "--trl-worker",
        "--work",
        str(work),
        "--target",
        str(args.target),
        "--window",
        str(args.window),
        "--trl-budget",
        str(args.trl_budget),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "RLX_CACHE": str(cache)}
    print(f"[trl] {' '.join(cmd)}", flush=True)
    # the worker stops itself at the target or the budget; the watchdog's margin covers imports and model load
    res = watch(
        cmd,
        env=env,
        log_path=work / "trl.log",
        steps_path=steps_path,
        reward_key="reward",
        target=args.target,
        window=args.window,
        budget_s=args.trl_budget + 60,
    )
    summary = summarise("TRL GRPOTrainer", res, "reward", "train_time", args.window)
    meta = work / "trl-meta.json"
    if meta.is_file():
        summary.update(json.loads(meta.read_text()))
    if not res["rows"]:
        print((work / "trl.log").read_text()[-3000:], file=sys.stderr)
    return summary


def trl_worker(args: argparse.Namespace) -> None:
    """Runs inside the TRL virtualenv: same model folder (copied), problems, reward, batch and hyper-parameters
    as `rlx run` with no arguments. Writes one JSON line per GRPO step to <work>/trl-steps.jsonl."""
    t_start = time.time()
    import torch

    # rlx's trainer and generator use one thread for this tiny model (cpu_threads: 1), measured 10x faster on
    # a shared 2-core machine than torch's default; give TRL the same
    torch.set_num_threads(args.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlx.cli import default_recipe
    from rlx.config import build_config
    from rlx.models.embedded import ensure_embedded_model
    from rlx_math.env import MathEnvironment
    from rlx_math.plugin import MathEnvConfig

    work = Path(args.work)
    run_cfg = build_config(default_recipe(), [f"seed={args.seed}"])
    g, tr = run_cfg.grpo, run_cfg.trainer.options()
    env = MathEnvironment(MathEnvConfig.model_validate(run_cfg.env.options()), seed=run_cfg.seed)
    problems = list(env.problems("train"))
    # the folder `rlx run` built and warmed up (already cached by the rlx runs: this does not rebuild it)
    source = ensure_embedded_model(run_cfg.model.path.removeprefix("builtin:"), env, seed=run_cfg.seed)
    model_dir = work / "trl-model"
    shutil.copytree(source, model_dir, dirs_exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": list(p.messages), "problem_index": i} for i, p in enumerate(problems)])

    def math_reward(completions: list[list[dict[str, str]]], problem_index: list[int], **_: Any) -> list[float]:
        texts = [c[0]["content"] for c in completions]
        return [s.reward for s in env.score([problems[i] for i in problem_index], texts)]

    micro = g.mini_batch_size  # one optimizer step per mini-batch, no accumulation: as rlx (micro == mini here)
    steps_per_gen = g.prompts_per_step * g.num_generations // micro
    config = GRPOConfig(
        output_dir=str(work / "trl-out"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=run_cfg.seed,
        # the time budget (checked in TimeToReward) ends the run, not a step count; the LR is constant anyway
        max_steps=100 * run_cfg.steps * steps_per_gen,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=1,
        steps_per_generation=steps_per_gen,  # generation batch = 32 prompts x 8 = 256, 2 optimizer steps
        num_generations=g.num_generations,
        max_completion_length=g.max_new_tokens,
        temperature=g.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=float(tr["lr"]),
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=float(tr.get("weight_decay", 0.0)),
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=float(tr["grad_clip"]),
        beta=0.0,
        num_iterations=1,
        epsilon=g.clip_low,
        epsilon_high=g.clip_high,
        loss_type="dapo",  # token-level: summed over the batch's completion tokens (rlx loss_agg: token)
        scale_rewards="group",  # (r - group mean) / group std (rlx baseline: mean, normalize_std: true)
        mask_truncated_completions=False,
        logging_steps=steps_per_gen,  # one log (one generation's reward) per GRPO step
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )

    steps_path = work / "trl-steps.jsonl"
    rewards: list[float] = []
    t_train: list[float] = []

    class TimeToReward(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):  # noqa: ANN001, ANN201
            t_train.append(time.time())

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            if not logs or "reward" not in logs:
                return
            rewards.append(float(logs["reward"]))
            row = {
                "step": len(rewards),
                "reward": rewards[-1],
                "train_time": time.time() - t_train[0],
                "time": time.time() - t_start,
            }
            with open(steps_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if first_reaching(rewards, args.target, args.window) or time.time() - t_start > args.trl_budget:
                control.should_training_stop = True

    meta = {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model_folder": source.name,
        "trl_config": {
            k: getattr(config, k)
            for k in (
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "steps_per_generation",
                "generation_batch_size",
                "num_generations",
                "max_completion_length",
                "learning_rate",
                "beta",
                "epsilon",
                "epsilon_high",
                "loss_type",
                "scale_rewards",
                "temperature",
                "max_grad_norm",
            )
        },
    }
    (work / "trl-meta.json").write_text(json.dumps(meta, indent=2))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[math_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[TimeToReward()],
    )
    trainer.train()
    env.close()


# ------------------------------------------------------------------------------------------------ report


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]], target: float, window: int) -> None:
    head = ("framework", "time to target", "loop time", "steps", "s/step", "start reward", "final reward")
    print(f"\ntarget: rolling mean reward over {window} steps >= {target}")
    print(f"{head[0]:<22}{head[1]:>16}{head[2]:>11}{head[3]:>7}{head[4]:>8}{head[5]:>14}{head[6]:>14}")
    for r in rows:
        ttt = f"{r['time_to_target_s']:.1f} s" if r["reached"] else f"not reached ({r['elapsed_s']:.0f} s)"
        loop = f"{r['loop_time_to_target_s']:.1f} s" if r["reached"] else "-"
        print(
            f"{r['framework']:<22}{ttt:>16}{loop:>11}{fmt(r['steps_to_target'], 'd'):>7}"
            f"{fmt(r['s_per_step'], '.2f'):>8}{fmt(r['starting_reward'], '.3f'):>14}"
            f"{fmt(r['final_rolling_reward'], '.3f'):>14}"
        )
    for d in DIFFERENCES:
        print(f"  differs: {d}")
    print(
        "time to target counts from process start (cold: includes building + warming up the model); loop time from "
        "the start of the training loop;\nfinal reward = rolling mean of the last steps run (each run stops at the "
        "target). torch threads: rlx the recipe's cpu_threads (1), TRL --threads (default 1, torch.set_num_threads)."
    )


def scrubbed_argv(argv: Sequence[str]) -> list[str]:
    """The command line without this machine's scratch/cache paths (they go into a committed results file)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--work", "--cache", "--rlx", "--trl-python"):
            skip = True
        elif not a.startswith(("--work=", "--cache=", "--rlx=", "--trl-python=")):
            out.append(a)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=0.8, help="rolling mean training reward to reach")
    p.add_argument("--window", type=int, default=5, help="steps in the rolling mean")
    p.add_argument("--rlx-budget", type=float, default=420.0, help="seconds before an rlx run is stopped")
    p.add_argument("--trl-budget", type=float, default=600.0, help="seconds before the TRL run is stopped")
    p.add_argument(
        "--cold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time rlx with an empty model cache (builds + warms up the model first)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="RLX_CACHE for the warm runs (default: a fresh one under --work, "
        "filled by the cold run; with --no-cold, $RLX_CACHE or ~/.cache/rlx)",
    )
    p.add_argument("--skip-trl", action="store_true", help="time rlx only")
    p.add_argument("--max-staleness", type=int, default=1,
                   help="also time warm asynchronous rlx runs with this grpo.max_staleness, without and with "
                   "grpo.mismatch_correction.kind=tis (0: skip them)")
    p.add_argument("--skip-rlx", action="store_true", help="time TRL only (the model must be in --cache already)")
    p.add_argument("--rlx", default=str(Path(sys.executable).parent / "rlx"), help="the rlx executable")
    p.add_argument(
        "--trl-python",
        default=str(REPO / ".venv-trl" / "bin" / "python"),
        help="python of a virtualenv with trl, rlx and rlx-math installed",
    )
    p.add_argument("--seed", type=int, default=0, help="run seed (data order, sampling; also the embedded model's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the TRL process")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed afterwards)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.trl_worker:
        trl_worker(args)
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rlx-ttr-"))
    work.mkdir(parents=True, exist_ok=True)
    default_cache = os.environ.get("RLX_CACHE") or str(Path.home() / ".cache" / "rlx")
    cache = Path(args.cache) if args.cache else (work / "cache" if args.cold else Path(default_cache))
    try:
        rows = []
        if args.cold and not args.skip_rlx:
            shutil.rmtree(cache, ignore_errors=True)
            rows.append(run_rlx(args, work, cache, "cold"))
        if not args.skip_rlx:
            rows.append(run_rlx(args, work, cache, "warm"))
            if args.max_staleness:  # asynchronous, without and with truncated importance sampling
                async_run = f"grpo.max_staleness={args.max_staleness}"
                rows.append(run_rlx(args, work, cache, f"warm, max_staleness={args.max_staleness}", async_run))
                rows.append(run_rlx(args, work, cache, f"warm, max_staleness={args.max_staleness}, tis", async_run,
                                    "grpo.mismatch_correction.kind=tis"))
        if not args.skip_trl:
            rows.append(run_trl(args, work, cache))
        print_table(rows, args.target, args.window)
        result = {
            "benchmark": "time_to_reward",
            "task": "rlx run (recipes/tiny-cpu.yaml): builtin:tiny on toy arithmetic, 32 prompts x 8 samples/step",
            "target": args.target,
            "window": args.window,
            "seed": args.seed,
            "differences": DIFFERENCES,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "command": " ".join(["python", "benchmarks/time_to_reward.py", *scrubbed_argv(sys.argv[1:])]),
            "results": rows,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
