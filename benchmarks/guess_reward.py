"""Time for `rlx run --env guess` (the embedded tiny model on the toy multi-turn game) to lift its training reward
by `--rise` over where it started. Prints a table and writes JSON.

    python benchmarks/guess_reward.py                  # cold: builds the embedded model in a fresh cache first
    python benchmarks/guess_reward.py --warm           # reuses $RLX_CACHE (or ~/.cache/rlx)

"Start" is the mean reward of the first `--window` steps; the step reported is the first whose rolling mean over
the last `--window` steps is >= start + rise. Seconds are wall time from the first GRPO step's start ("loop") and
from process start ("to +rise from start": imports, model build or load, then the loop; an upper bound, as the
set-up time is taken as the run's total minus its steps). The machine may be shared: s/step carries load noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "guess_reward.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rise", type=float, default=0.3)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--warm", action="store_true", help="reuse the model cache instead of a fresh one")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rlx-guess-bench-") as tmp:
        env = dict(os.environ)
        if not args.warm:
            env["RLX_CACHE"] = str(Path(tmp) / "cache")
        run_dir = Path(tmp) / "run"
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "rlx.cli", "run", "--env", "guess", f"output_dir={run_dir}", f"steps={args.steps}",
             "validation.period=0", "checkpoint.export_hf=false", "logging.progress=false", "logging.tensorboard=false"],
            env=env, capture_output=True, text=True,
        )
        total = time.time() - t0
        if proc.returncode:
            sys.exit(f"rlx run failed:\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]

    rewards = [r["reward/mean"] for r in rows]
    step_s = [r["time/step"] for r in rows]
    w = args.window
    start = sum(rewards[:w]) / w
    reached = next((i for i in range(w, len(rewards) + 1) if sum(rewards[i - w : i]) / w >= start + args.rise), None)
    loop_s = sum(step_s[:reached]) if reached else None
    setup_s = total - sum(step_s)  # imports, model build or load (and the run's close: a little over)
    best = max(sum(rewards[i - w : i]) / w for i in range(w, len(rewards) + 1))
    result = {
        "cold": not args.warm, "steps": len(rows), "window": w, "rise": args.rise, "start_reward": start,
        "best_rolling_reward": best, "step_reached": reached, "loop_s_to_rise": loop_s,
        "s_from_start_to_rise": None if loop_s is None else setup_s + loop_s, "setup_s": setup_s,
        "total_s": total, "s_per_step": sum(step_s) / len(step_s),
        "turns_mean": sum(r["episode/turns_mean"] for r in rows) / len(rows),
        "observation_token_frac": sum(r["episode/observation_token_frac"] for r in rows) / len(rows),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    to_rise = result["s_from_start_to_rise"]
    print(f"{'start':>7} {'best':>6} {'+' + str(args.rise) + ' at step':>14} {'loop s':>8} {'from start s':>13} "
          f"{'s/step':>7} {'total s':>8}")
    print(f"{start:7.3f} {best:6.3f} {reached if reached else '-':>14} "
          f"{loop_s if loop_s is not None else float('nan'):8.1f} {to_rise if to_rise is not None else float('nan'):13.1f} "
          f"{result['s_per_step']:7.2f} {total:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    tmp_out.rename(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
