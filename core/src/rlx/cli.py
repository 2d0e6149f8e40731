"""The `rlx` command line: `rlx run`, `rlx plugins list`, `rlx config show`, `rlx eval`, `rlx export`.

Errors a user can fix (RlxError) are printed as one clear message and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlx.errors import RlxError

app = typer.Typer(
    name="rlx",
    help="Post-training for LLMs (GRPO first). Components come from plugins: see `rlx plugins list`.",
    no_args_is_help=False,
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
plugins_app = typer.Typer(help="Inspect installed plugins and their components.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the resolved run configuration.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
app.add_typer(config_app, name="config")

console = Console(stderr=False)
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML recipe (may use `defaults:`)")]
GeneratorOpt = Annotated[str | None, typer.Option("--generator", "-g", help="generator component name")]
TrainerOpt = Annotated[str | None, typer.Option("--trainer", "-t", help="trainer component name")]
EnvOpt = Annotated[str | None, typer.Option("--env", "-e", help="environment component name")]
ClusterOpt = Annotated[str | None, typer.Option("--cluster", help="local | ray")]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. grpo.num_generations=16 trainer.lr=1e-6")]


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Without a sub-command: `rlx run` on the embedded CPU default."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(run_cmd)


def default_recipe() -> Path:
    """The embedded CPU default (`recipes/tiny-cpu.yaml`, shipped inside the package)."""
    from importlib.resources import files

    return Path(str(files("rlx") / "recipes" / "tiny-cpu.yaml"))


def _resolve(config, overrides, generator, trainer, env, cluster):
    from rlx.config import build_config
    from rlx.plan import resolve_plan

    overrides = list(overrides or [])
    implicit = config is None
    if implicit:
        config = default_recipe()
    if cluster:
        overrides.append(f"cluster.kind={cluster}")
    run_config = build_config(config, overrides, generator=generator, trainer=trainer, env=env,
                              warn_dropped=not implicit)
    return resolve_plan(run_config)


@app.command("run")
def run_cmd(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    generator: GeneratorOpt = None,
    trainer: TrainerOpt = None,
    env: EnvOpt = None,
    cluster: ClusterOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate everything, print the plan, load nothing")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="ignore checkpoints in output_dir and start over")] = False,
) -> None:
    """Train with GRPO. With no arguments: the embedded tiny model on toy arithmetic, on the CPU."""
    plan = _resolve(config, overrides, generator, trainer, env, cluster)
    if fresh:
        plan.config.checkpoint.resume = False
    console.print(plan.describe())
    if dry_run:
        console.print("[green]dry run: configuration and components are valid; nothing was loaded.[/green]")
        return
    from rlx.run import run

    try:
        run(plan)
    except KeyboardInterrupt as exc:  # typer turns an interrupt into a silent exit 130: say where the run stopped
        _print_interrupt(exc)
        raise typer.Exit(130) from None


def _print_interrupt(exc: KeyboardInterrupt) -> None:
    err_console.print(f"[yellow]{escape(str(exc) or 'interrupted')}[/yellow]", highlight=False, soft_wrap=True)


@plugins_app.command("list")
def plugins_list(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Every component of every plugin (and broken plugins with their error). Imports no engine."""
    from rlx.plugins import catalog

    cat = catalog()
    rows = []
    for kind, comps in cat.components.items():
        for name, spec in sorted(comps.items()):
            rows.append(
                {
                    "kind": kind,
                    "name": name,
                    "distribution": spec.plugin.distribution,
                    "version": spec.plugin.version,
                    "origin": spec.plugin.origin,
                    "plugin": spec.plugin.name,
                    "module": spec.factory,
                    "description": spec.description,
                }
            )
    broken = [
        {"plugin": p.name, "distribution": p.distribution, "version": p.version, "module": p.module, "error": p.error}
        for p in cat.plugins
        if p.error
    ]
    if as_json:
        print(json.dumps({"components": rows, "broken": broken}, indent=2))
        return
    table = Table(title="rlx components")
    for col in ("kind", "name", "distribution", "version", "origin", "module"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["kind"], r["name"], r["distribution"], r["version"], r["origin"], r["module"])
    console.print(table)
    for b in broken:
        console.print(
            f"[red]broken plugin[/red] {escape(b['plugin'])} ({b['distribution']} {b['version']}): {escape(b['error'])}"
        )


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    overrides: Overrides = None,
    generator: GeneratorOpt = None,
    trainer: TrainerOpt = None,
    env: EnvOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Print the fully resolved configuration (recipe + defaults + overrides), validated."""
    plan = _resolve(config, overrides, generator, trainer, env, cluster)
    print(plan.to_yaml(), end="")


def _load_extra_commands() -> None:
    from rlx.plugins import load_plugins

    load_plugins().add_commands(app)


def main(argv: list[str] | None = None) -> None:
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)])
    logging.getLogger("rlx").setLevel(logging.INFO)
    try:
        # builtin commands that live in their own modules (eval, export) register through the same hook
        _load_extra_commands()
        app(args=argv, standalone_mode=True)
    except RlxError as exc:
        if os.environ.get("RLX_DEBUG"):
            traceback.print_exc()
        # escaped: messages quote user input and install commands such as pip install 'rlx-sglang[engine]'
        # soft_wrap: no hard line breaks, so a long path in the message stays one piece to copy (the terminal wraps)
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        _print_interrupt(exc)
        sys.exit(130)


if __name__ == "__main__":
    main()
