"""The builtin sub-commands `rlx eval`, `rlx export` and `rlx plot`, added through the `register_commands` hook
like any plugin's commands. Heavy imports happen inside the command bodies only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def add_commands(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("export")(export_cmd)
    app.command("plot")(plot_cmd)


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace the destination even if rlx did not write it")]


def eval_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="HF folder, hub id, or builtin:tiny")],
    env: Annotated[str, typer.Option("--env", "-e", help="environment component")] = "math",
    generator: Annotated[str, typer.Option("--generator", "-g", help="generator component")] = "hf",
    samples: Annotated[int, typer.Option("--samples", "-k", help="samples per problem (k of avg@k, pass@k)")] = 1,
    split: Annotated[str, typer.Option("--split", help="train | validation")] = "validation",
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.6,
    top_p: Annotated[float, typer.Option(help="nucleus sampling")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="completion length cap")] = 1024,
    max_problems: Annotated[int | None, typer.Option(help="evaluate only the first N problems")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for result.json and per_problem.jsonl")] = Path("eval"),
    overwrite: OverwriteOpt = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="recipe for env/generator/model options")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. env.validation=aime.jsonl")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
) -> None:
    """Evaluate a model on an environment's problems: accuracy (avg@k), pass@k; writes JSON results."""
    from rlx.outputs import check_replaceable, writing_folder

    check_replaceable(out, kind="eval", what="--out", overwrite=overwrite)  # before anything is imported or loaded
    from rich.console import Console

    from rlx.config import build_config
    from rlx.contracts import CheckedEnvironment
    from rlx.data import PromptEncoder
    from rlx.errors import ConfigError
    from rlx.evaluation import evaluate
    from rlx.interfaces import SamplingParams
    from rlx.models import load_tokenizer, resolve_model
    from rlx.plan import resolve_plan
    from rlx.registry import BuildContext
    from rlx.run import quiet_libraries

    if split not in ("train", "validation"):
        raise ConfigError(f"--split must be 'train' or 'validation', got '{split}'")
    if samples < 1:
        raise ConfigError("--samples must be >= 1")
    console = Console()
    quiet_libraries()
    cfg = build_config(config, [*(overrides or []), f"model.path={model}", f"seed={seed}"], generator=generator, env=env)
    plan = resolve_plan(cfg)
    env_choice = plan.selection.environment
    environment = CheckedEnvironment(env_choice.build(BuildContext(seed=seed)), env_choice.spec.label)
    spec = resolve_model(plan.config.model, environment, seed=seed, console=console)
    tokenizer = load_tokenizer(spec)
    encoder = PromptEncoder(tokenizer, spec.max_seq_len)
    problems = [p for p in environment.problems(split) if encoder.fits(p)]  # type: ignore[arg-type]
    if max_problems:
        problems = problems[:max_problems]
    if not problems:
        raise ConfigError(f"environment '{env}' has no {split} problems to evaluate")
    gen = plan.selection.generator.build(BuildContext(seed=seed, model=spec))
    try:
        room = spec.max_seq_len - max(len(encoder.encode(p)) for p in problems)
        params = SamplingParams(n=samples, temperature=temperature, top_p=top_p,
                                max_new_tokens=max(1, min(max_new_tokens, room)), seed=seed)
        console.print(f"evaluating {spec.path} on {len(problems)} {split} problems x {samples} samples ({generator})")
        result = evaluate(gen, environment, encoder, problems, params)
    finally:
        gen.close()
        environment.close()
    summary = {"model": spec.path, "env": env, "generator": generator, "split": split, "samples": samples,
               "temperature": temperature, "top_p": top_p, "max_new_tokens": params.max_new_tokens, **result.summary}
    with writing_folder(out, kind="eval", what="--out", overwrite=overwrite) as staging:
        staging.mkdir()
        (staging / "result.json").write_text(json.dumps(summary, indent=2))
        (staging / "per_problem.jsonl").write_text("".join(json.dumps(row) + "\n" for row in result.per_problem))
    for key in sorted(k for k in result.summary if k.startswith(("accuracy", "avg@", "pass@"))):
        console.print(f"  {key:<10} {result.summary[key]:.4f}")
    console.print(f"results: {out / 'result.json'}, per problem: {out / 'per_problem.jsonl'}")


def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a checkpoint folder (runs/x/checkpoints/step_N) or a run folder")],
    out: Annotated[Path, typer.Argument(help="where to write the Hugging Face folder")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a checkpoint as a Hugging Face model folder (safetensors, config, tokenizer, generation config).

    OUT may be an earlier rlx export (replaced whole, the new one written first); anything else there is refused
    unless --overwrite."""
    from rlx.outputs import check_replaceable

    check_replaceable(out, kind="hf-export", what="export destination", overwrite=overwrite)  # before torch loads
    from rlx.export import export_checkpoint

    path = export_checkpoint(checkpoint, out, overwrite=overwrite)
    typer.echo(f"exported {path}")


def plot_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run's output_dir (holding metrics.jsonl)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG path (default: RUN_DIR/metrics.png)")] = None,
) -> None:
    """Plot a run's headline curves (reward, validation, response length, clip fraction, log-prob mismatch, step
    time by phase) into one PNG. Needs matplotlib: pip install 'rlx[plot]'."""
    from rlx.plot import plot_run

    typer.echo(f"wrote {plot_run(run_dir, out)}")
