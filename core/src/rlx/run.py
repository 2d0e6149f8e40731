"""`rlx run`: build the components a Plan names, drive the GRPO loop (validation and checkpoint periods, exact
resume), export the policy. The pieces: `rlx.models` (which model), `rlx.cluster` (where components live),
`rlx.loop` (one GRPO step), `rlx.rundir` (what is written where)."""

from __future__ import annotations

import random
import time
from typing import Any

import torch
from rich.console import Console

from rlx.cluster import Components, build_components
from rlx.contracts import CheckedEnvironment
from rlx.data import PromptEncoder, fitting_problems
from rlx.loop import GRPOLoop
from rlx.metrics import MetricsLogger
from rlx.models import load_tokenizer, resolve_model
from rlx.plan import Plan
from rlx.registry import BuildContext
from rlx.rundir import RunDir


def run(plan: Plan, console: Console | None = None) -> dict[str, Any]:
    """Train; return a summary (paths and final metrics)."""
    cfg, console = plan.config, console or Console()
    rundir = RunDir.prepare(cfg)
    rundir.check_resume(plan, console, model_resolved=False)
    quiet_libraries()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    env_choice = plan.selection.environment
    env = CheckedEnvironment(env_choice.build(BuildContext(seed=cfg.seed)), env_choice.spec.label)
    components: Components | None = None
    loop: GRPOLoop | None = None
    summary: dict[str, Any] = {"output_dir": str(rundir.path)}
    t_start = time.time()
    try:
        model = resolve_model(cfg.model, env, seed=cfg.seed, console=console)
        cfg.model.path = model.path  # the saved config names the resolved folder (export and resume need it)
        rundir.check_resume(plan, console, model_resolved=True)
        rundir.write_config(plan.to_yaml())
        encoder = PromptEncoder(load_tokenizer(model), model.max_seq_len)
        train = fitting_problems(env, encoder, "train", console=console)
        val = fitting_problems(env, encoder, "validation", console=console)
        ctx = BuildContext(seed=cfg.seed, model=model, with_reference=cfg.grpo.kl_coef > 0)
        components = build_components(plan.selection, cfg.cluster, ctx, env)
        # scoring happens where the cluster put it: `env` itself, or Ray scorer actors (checked the same way)
        scorer = components.env if components.env is env else CheckedEnvironment(components.env, env_choice.spec.label)
        loop = GRPOLoop(components.generator, components.trainer, scorer, encoder, cfg.grpo, cfg.validation,
                        cfg.seed, train, val, rollout=cfg.rollout, timeout_s=cfg.cluster.timeout_s)
        state = rundir.start(components.trainer, components.generator, console)
        if state is not None:
            loop.step = state["step"]
            loop.cursor.load(state["data"])
        with rundir.logger(loop.step, console) as logger:
            summary["metrics"] = str(logger.jsonl_path)
            summary["final"] = train_steps(loop, rundir, logger, components, console)
        summary["rollouts"] = str(rundir.path / "rollouts.jsonl") if cfg.logging.rollouts_per_step else None
        if cfg.checkpoint.export_hf:
            summary.update(rundir.export(components.trainer, loop.step))
    except KeyboardInterrupt:
        raise RunInterrupted(interrupt_message(rundir, None if loop is None else loop.step)) from None
    finally:
        if loop is not None:
            loop.close()  # the asynchronous producer stops before the generator closes
        if components is not None:
            components.close()  # closes components.env too: `env` itself, or the cluster's scorers
        if components is None or components.env is not env:
            env.close()
    summary["wall_time_s"] = time.time() - t_start
    if cfg.logging.plot:
        summary["plot"] = write_plot(rundir, console)
    report(summary, rundir, console)
    return summary


def train_steps(loop: GRPOLoop, rundir: RunDir, logger: MetricsLogger, components: Components,
                console: Console) -> dict[str, float]:
    """GRPO steps up to `steps`, with validation and checkpoints at their periods and at the last step."""
    cfg = rundir.config
    tokenizer = loop.encoder.tokenizer
    rollouts = rundir.rollout_log(lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False))
    last: dict[str, float] = {}
    if loop.step == 0 and cfg.validation.period:
        first = loop.validate()
        logger.log(0, first)
        console.print(f"starting validation accuracy: {first.get('val/accuracy', float('nan')):.3f}")
    while loop.step < cfg.steps:
        result = loop.run_step()
        last = dict(result.metrics)
        if result.step == 1:
            console.print(f"starting reward (step 1): {last['reward/mean']:.3f}")
        is_last = result.step == cfg.steps
        if cfg.validation.period and (result.step % cfg.validation.period == 0 or is_last):
            last.update(loop.validate())
        logger.log(result.step, last)
        rollouts.write(result.step, result.samples)
        if is_last or (cfg.checkpoint.period and result.step % cfg.checkpoint.period == 0):
            rundir.save(result.step, components.trainer, {"data": loop.data_state(), "metrics": last})
    return last


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where it stopped and how to go on."""


def interrupt_message(rundir: RunDir, done_steps: int | None) -> str:
    latest = rundir.checkpoints.latest()
    where = "while starting" if done_steps is None else f"during step {done_steps + 1}"
    saved = f"last checkpoint: step {latest.step} ({latest.path})" if latest else "no checkpoint was written yet"
    again = "run the same command again to resume from it" if latest else "run the same command again to start over"
    return f"interrupted {where}; {saved}; {again}"


def report(summary: dict[str, Any], rundir: RunDir, console: Console) -> None:
    last = summary.get("final") or {}
    if last:
        console.print(f"final reward {last.get('reward/mean', float('nan')):.3f}"
                      + (f", validation accuracy {last['val/accuracy']:.3f}" if "val/accuracy" in last else ""))
    if "metrics" in summary:
        tensorboard = f" (TensorBoard: {rundir.path / 'tensorboard'})" if rundir.config.logging.tensorboard else ""
        console.print(f"metrics: {summary['metrics']}{tensorboard}")
    if summary.get("rollouts"):
        console.print(f"sample rollouts: {summary['rollouts']}")
    if summary.get("plot"):
        console.print(f"plot: {summary['plot']}")
    elif "metrics" in summary:
        console.print(f"plot the curves with: rlx plot {rundir.path}")
    if "model" in summary:
        console.print(f"model (Hugging Face format): {summary['model']} (best checkpoint: {summary['best_model']})")


def write_plot(rundir: RunDir, console: Console) -> str | None:
    """metrics.png beside metrics.jsonl when matplotlib is installed (`rlx[plot]`); a plot never fails a run."""
    from rlx.plot import PlotUnavailable, plot_run

    try:
        return str(plot_run(rundir.path))
    except PlotUnavailable:
        return None
    except Exception as exc:  # noqa: BLE001 - the run's results are written; the picture is a convenience
        console.print(f"[yellow]could not draw the plot ({type(exc).__name__}: {exc}); rlx plot {rundir.path} "
                      "retries[/yellow]")
        return None


def quiet_libraries() -> None:
    """transformers' per-load progress bars and advisories drown the run's own output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
