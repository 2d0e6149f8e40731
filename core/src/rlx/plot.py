"""`rlx plot RUN_DIR`: the headline curves of a run (reward, validation, response length, clip fraction, train vs
generator log-prob mismatch, step time by phase) as one PNG beside its metrics.jsonl. Needs matplotlib
(`pip install 'rlx[plot]'`); nothing else in rlx imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlx.errors import ConfigError
from rlx.metrics import read_metrics

PNG = "metrics.png"
# the phases of one GRPO step, in the order they happen (rlx.loop)
PHASES = ("time/wake_up", "time/generate", "time/sleep", "time/score", "time/logprobs", "time/train",
          "time/weight_sync")


class PlotUnavailable(ConfigError):
    """matplotlib is not installed."""


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw `run_dir/metrics.jsonl` into `out` (default `run_dir/metrics.png`); returns the PNG's path."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"'{run_dir}' has no metrics.jsonl: give the output_dir of an rlx run (e.g. runs/tiny-cpu)")
    records = read_metrics(metrics)
    if not records:
        raise ConfigError(f"{metrics} holds no records yet: plot again after the run's first step")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed (and none on a cluster node)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            f"rlx plot needs matplotlib, which is not installed ({exc}). Install it with: pip install 'rlx[plot]'"
        ) from None

    train = [r for r in records if "reward/mean" in r]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    fig.suptitle(f"{run_dir.name}: {len(train)} GRPO steps", fontsize=13)
    window = max(1, len(train) // 20)
    _reward(axes[0, 0], train, window)
    _validation(axes[0, 1], records)
    _lines(axes[0, 2], train, {"response_length/mean": "mean", "response_length/max": "max"},
           "response length (tokens)", window, twin=("response_length/truncated_frac", "truncated fraction"))
    _lines(axes[1, 0], train, {"train/clip_frac": "clipped", "train/clip_frac_low": "low", "train/clip_frac_high": "high"},
           "clip fraction", window)
    _mismatch(axes[1, 1], train, window)
    _phases(axes[1, 2], train)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    target = Path(out) if out is not None else run_dir / PNG
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(target)
    return target


def _reward(ax: Any, train: Sequence[dict[str, Any]], window: int) -> None:
    steps, mean = _series(train, "reward/mean")
    ax.plot(steps, mean, color="tab:blue", alpha=0.35, linewidth=1, label="mean")
    if window > 1:
        ax.plot(steps, rolling_mean(mean, window), color="tab:blue", linewidth=2, label=f"mean, {window}-step avg")
    s_steps, solved = _series(train, "reward/solved_frac")
    if solved and solved != mean:
        ax.plot(s_steps, rolling_mean(solved, window), color="tab:green", linewidth=1.5, label="solved fraction")
    ax.set_title("training reward")
    ax.legend(loc="best", fontsize=8)


def _validation(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    # pass@1 equals accuracy (both are the mean of c/k); pass@k for k > 1 adds what accuracy does not show
    keys = sorted({k for r in records for k in r if k == "val/accuracy" or (k.startswith("val/pass@") and k != "val/pass@1")})
    for key in keys:
        steps, values = _series(records, key)
        ax.plot(steps, values, marker="o", linewidth=1.5, label=key.removeprefix("val/"))
    ax.set_title("validation")
    if keys:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation\n(validation.period=0)", ha="center", va="center", transform=ax.transAxes,
                color="gray")


def _mismatch(ax: Any, train: Sequence[dict[str, Any]], window: int) -> None:
    """mean exp|logp_generator - logp_trainer| is 1 when they agree: its excess over 1, on a log scale (fp32 on a
    CPU sits near 1e-7, bf16 engines near 1e-2; a weight sync that failed shows as a jump of decades)."""
    steps, values = _series(train, "logprob_mismatch")
    if values:
        excess = [max(v - 1.0, 1e-12) for v in rolling_mean(values, window)]
        ax.plot(steps, excess, linewidth=1.5, color="tab:purple")
        ax.set_yscale("log")
    ax.set_title("generator vs trainer log-probs: mean exp|Δ| − 1" + (f" ({window}-step avg)" if window > 1 else ""))


def _lines(ax: Any, train: Sequence[dict[str, Any]], keys: dict[str, str], title: str, window: int, *,
           twin: tuple[str, str] | None = None) -> None:
    drawn = False
    for key, label in keys.items():
        steps, values = _series(train, key)
        if values:
            ax.plot(steps, rolling_mean(values, window), linewidth=1.5, label=label)
            drawn = True
    if twin is not None:
        steps, values = _series(train, twin[0])
        if values and any(values):
            other = ax.twinx()
            other.plot(steps, rolling_mean(values, window), color="tab:red", linewidth=1, alpha=0.7, label=twin[1])
            other.set_ylim(0, 1)
            other.set_ylabel(twin[1], color="tab:red")
    ax.set_title(title + (f" ({window}-step avg)" if window > 1 else ""))
    if drawn and len(keys) > 1:
        ax.legend(loc="best", fontsize=8)


def _phases(ax: Any, train: Sequence[dict[str, Any]]) -> None:
    present = [p for p in PHASES if any(p in r for r in train)]
    steps = [r["step"] for r in train]
    if present:
        ax.stackplot(steps, *[[r.get(p, 0.0) for r in train] for p in present],
                     labels=[p.removeprefix("time/") for p in present], alpha=0.85)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=4, frameon=False)
    ax.set_title("step time by phase (s)")
