"""`rlx run`: build the components a Plan names, then drive the GRPO loop with logging, validation,
checkpoints (and exact resume) and the final Hugging Face export."""

from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from rlx.checkpoint import CheckpointManager
from rlx.cluster import Components, build_components, build_environment
from rlx.config import RunConfig
from rlx.errors import ConfigError
from rlx.interfaces import Environment, ModelSpec
from rlx.loop import GRPOLoop, PromptEncoder
from rlx.metrics import MetricsLogger, truncate_metrics
from rlx.plan import Plan

log = logging.getLogger("rlx.run")


def resolve_model(config: RunConfig, env: Environment, console: Console) -> ModelSpec:
    """`builtin:tiny` -> the embedded tiny model (built and warmed up once, then cached); else as given."""
    m = config.model
    path = m.path
    if path.startswith("builtin:"):
        from rlx.builtin.embedded import ensure_embedded_model

        path = str(ensure_embedded_model(path.removeprefix("builtin:"), env, seed=config.seed, console=console))
    elif path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        raise ConfigError(f"model.path '{path}' does not exist (give a local Hugging Face folder or a hub id)")
    return ModelSpec(
        path=str(Path(path).expanduser()) if Path(path).expanduser().exists() else path,
        dtype=m.dtype,
        tokenizer=m.tokenizer,
        trust_remote_code=m.trust_remote_code,
        max_seq_len=m.max_seq_len,
    )


def load_tokenizer(model: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model.tokenizer_path, trust_remote_code=model.trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer of '{model.tokenizer_path}': {exc}") from exc
    if tok.chat_template is None:
        raise ConfigError(f"the tokenizer of '{model.tokenizer_path}' has no chat template; rlx prompts are chat messages")
    return tok


def export_final_and_best(out: Path, ckpt: CheckpointManager, components: Components, step: int) -> dict[str, str]:
    """`<out>/hf`: the final policy. `<out>/best-hf`: the best checkpoint by the chosen metric (what the next
    DeepScaleR stage starts from); a link to `hf` when the final policy is the best."""
    final_dir, best_dir = out / "hf", out / "best-hf"
    components.trainer.export_hf(str(final_dir))
    result = {"model": str(final_dir)}
    best = ckpt.best()
    if best_dir.is_symlink() or best_dir.is_file():
        best_dir.unlink()
    elif best_dir.exists():
        shutil.rmtree(best_dir)
    if best is None or best.step == step:
        best_dir.symlink_to(final_dir.name)
    else:
        ckpt.load(best, components.trainer)
        components.trainer.export_hf(str(best_dir))
    result["best_model"] = str(best_dir)
    return result


def quiet_libraries() -> None:
    """transformers' per-load progress bars and advisories drown the run's own output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def run(plan: Plan, console: Console | None = None) -> dict[str, Any]:
    """Train; return a summary (paths and final metrics)."""
    cfg = plan.config
    console = console or Console()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    _seed_everything(cfg.seed)

    env = build_environment(plan)
    model = resolve_model(cfg, env, console)
    cfg.model.path = model.path  # the saved config names the resolved folder (export and resume need it)
    tokenizer = load_tokenizer(model)
    encoder = PromptEncoder(tokenizer, model.max_seq_len)
    train = [p for p in env.problems("train") if encoder.fits(p)]
    val = [p for p in env.problems("validation") if encoder.fits(p)]
    dropped = len(env.problems("train")) - len(train)
    if dropped:
        console.print(f"[yellow]{dropped} training prompts are longer than model.max_seq_len and were dropped[/yellow]")

    components: Components = build_components(plan, model, env)
    loop = GRPOLoop(
        generator=components.generator,
        trainer=components.trainer,
        env=components.env,  # scoring where the cluster puts it (Ray scorer actors, or this process)
        encoder=encoder,
        grpo=cfg.grpo,
        validation=cfg.validation,
        seed=cfg.seed,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        train_problems=train,
        val_problems=val,
    )
    ckpt = CheckpointManager(out / "checkpoints", keep_best=cfg.checkpoint.keep_best,
                             metric=cfg.checkpoint.metric, mode=cfg.checkpoint.mode)
    config_yaml = plan.to_yaml()
    (out / "config.yaml").write_text(config_yaml)

    latest = ckpt.latest() if cfg.checkpoint.resume else None
    if latest is None:
        # starting over where an earlier run left checkpoints or metrics: set them aside, so two runs never mix
        # and nothing is lost
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if ckpt.list():
            aside = out / f"checkpoints.before-{stamp}"
            (out / "checkpoints").rename(aside)
            console.print(f"[yellow]starting fresh: the earlier checkpoints were moved to {aside}[/yellow]")
        if (out / "metrics.jsonl").is_file():
            (out / "metrics.jsonl").rename(out / f"metrics.before-{stamp}.jsonl")
    if latest is not None:
        state = ckpt.load(latest, components.trainer)
        loop.step = state["step"]
        loop.cursor.load(state["data"])
        components.generator.update_weights(components.trainer.named_weights())
        console.print(f"resumed from {latest.path} (step {loop.step})")
        if loop.step >= cfg.steps:
            console.print(f"[yellow]the checkpoint is at step {loop.step} >= steps={cfg.steps}: nothing to train. "
                          f"Raise `steps` to train further, or use --fresh to start over.[/yellow]")

    # a run killed after logging a step but before checkpointing it will log that step again: keep one record
    truncate_metrics(out / "metrics.jsonl", loop.step)
    logger = MetricsLogger(out, total_steps=cfg.steps, start_step=loop.step, tensorboard=cfg.logging.tensorboard,
                           wandb_project=cfg.logging.wandb_project, progress=cfg.logging.progress,
                           run_name=cfg.name, config=plan.config.model_dump(mode="json"), console=console)
    summary: dict[str, Any] = {"output_dir": str(out), "metrics": str(logger.jsonl_path)}
    last: dict[str, float] = {}
    t_start = time.time()
    try:
        if loop.step == 0 and cfg.validation.period:
            first = loop.validate()
            logger.log(0, first)
            console.print(f"starting validation accuracy: {first.get('val/accuracy', float('nan')):.3f}")
        while loop.step < cfg.steps:
            result = loop.run_step()
            metrics = dict(result.metrics)
            if result.step == 1:
                console.print(f"starting reward (step 1): {metrics['reward/mean']:.3f}")
            is_last = result.step == cfg.steps
            if cfg.validation.period and (result.step % cfg.validation.period == 0 or is_last):
                metrics.update(loop.validate())
            logger.log(result.step, metrics)
            last = metrics
            if is_last or (cfg.checkpoint.period and result.step % cfg.checkpoint.period == 0):
                ckpt.save(result.step, components.trainer,
                          {"data": loop.cursor.state(), "metrics": metrics}, config_yaml)
        if cfg.checkpoint.export_hf:
            summary.update(export_final_and_best(out, ckpt, components, loop.step))
    finally:
        logger.close()
        components.close()  # closes components.env: the local environment itself, or the cluster's scorers
        if components.env is not env:
            env.close()
    summary["final"] = last
    summary["wall_time_s"] = time.time() - t_start
    if last:
        console.print(f"final reward {last.get('reward/mean', float('nan')):.3f}"
                      + (f", validation accuracy {last['val/accuracy']:.3f}" if "val/accuracy" in last else ""))
    console.print(f"metrics: {logger.jsonl_path} (TensorBoard: {out / 'tensorboard'})")
    if "model" in summary:
        console.print(f"model (Hugging Face format): {summary['model']} (best checkpoint: {summary['best_model']})")
    return summary
