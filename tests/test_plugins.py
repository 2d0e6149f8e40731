"""The plugin manager: builtins and entry points through the same hooks, blocking, clashes, broken plugins."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import types

import pytest
import typer
from pydantic import BaseModel, ConfigDict

import rlx
from rlx.errors import ComponentError, ConfigError, PluginError
from rlx.plan import resolve_plan
from rlx.plugins import PluginManager, catalog, load_plugins


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    knob: int = 1


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: rlx.hookimpl(fn) for name, fn in hooks.items()})


def test_hook_register_generators(register_plugin):
    register_plugin(_plugin(register_generators=lambda registry: registry.add(
        "throwaway-gen", config=_Cfg, factory="rlx.builtin.hf_generator:HFGenerator")), "throwaway")
    spec = catalog().get("generator", "throwaway-gen")
    assert spec.config is _Cfg and spec.plugin.name == "throwaway" and spec.kind == "generator"


def test_hook_register_trainers(register_plugin):
    register_plugin(_plugin(register_trainers=lambda registry: registry.add(
        "throwaway-trainer", config=_Cfg, factory="collections:OrderedDict")), "throwaway")
    spec = catalog().get("trainer", "throwaway-trainer")
    assert spec.load_factory().__name__ == "OrderedDict"


def test_hook_register_environments(register_plugin):
    register_plugin(_plugin(register_environments=lambda registry: registry.add(
        "throwaway-env", config=_Cfg, factory="collections:Counter", description="d")), "throwaway")
    assert catalog().get("environment", "throwaway-env").description == "d"


def test_hook_register_commands(register_plugin):
    def register_commands(app: typer.Typer) -> None:
        @app.command("hello-throwaway")
        def hello() -> None:
            typer.echo("hello from a plugin")

    register_plugin(_plugin(register_commands=register_commands), "throwaway")
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("noop")(lambda: None)
    load_plugins([(p, i) for p, i in __import__("rlx.plugins").plugins._EXTRA]).add_commands(app)
    result = CliRunner().invoke(app, ["hello-throwaway"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def _halved_grpo(rewards, options):
    """A throwaway advantage estimator: half of grpo's."""
    from rlx.grpo.advantages import grpo_advantages

    return grpo_advantages(rewards, options) / 2


def test_hook_register_algorithms(register_plugin):
    from rlx.algorithms import select_algorithms
    from rlx.config import build_config
    from rlx.plugins import algorithm_catalog

    register_plugin(_plugin(register_algorithms=lambda registry: registry.add_advantage_estimator(
        "halved_grpo", _halved_grpo)), "throwaway")
    cat = algorithm_catalog()
    spec = cat.get("advantage_estimator", "halved_grpo")
    assert spec.plugin.name == "throwaway" and spec.description == "A throwaway advantage estimator: half of grpo's."
    assert cat.get("policy_loss", "gspo").plugin.origin == "builtin"  # builtins go through the same hook
    algorithms = select_algorithms(build_config(None, ["grpo.advantage=halved_grpo"]).grpo, cat)
    import torch

    # grpo of [1, 0]: +-0.5 / std (sqrt(0.5)), halved
    assert algorithms.advantages(torch.tensor([[1.0, 0.0]]))[0].tolist() == pytest.approx([0.35355, -0.35355], abs=1e-5)
    # the run resolves against the same registry: a plugin's name is valid config, a typo of it is named
    resolve_plan(build_config(None, ["grpo.advantage=halved_grpo"]))
    with pytest.raises(ConfigError, match=r"grpo.advantage: unknown advantage estimator 'halved_grp'.*halved_grpo"):
        resolve_plan(build_config(None, ["grpo.advantage=halved_grp"]))


def test_algorithm_name_clash_names_both_plugins(register_plugin):
    from rlx.plugins import algorithm_catalog

    register_plugin(_plugin(register_algorithms=lambda registry: registry.add_policy_loss("gspo", _halved_grpo)),
                    "impostor")
    with pytest.raises(PluginError, match=r"policy loss named 'gspo'.*rlx.*impostor"):
        algorithm_catalog()


def test_builtins_register_through_hooks():
    cat = catalog()
    assert cat.get("generator", "hf").plugin.origin == "builtin"
    assert cat.get("trainer", "fsdp").plugin.distribution == "rlx"


def test_misspelt_hook_marks_only_that_plugin_broken(register_plugin):
    """`register_environment` (no s) would be silently ignored by pluggy: the plugin is listed as broken, naming the
    hook and the real one, and every other plugin keeps working."""
    register_plugin(_plugin(register_environment=lambda registry: registry.add(
        "typo-env", config=_Cfg, factory="x:y")), "typo-plugin")
    cat = catalog()
    (broken,) = [p for p in cat.plugins if p.error]
    assert broken.name == "typo-plugin"
    assert "'register_environment', which rlx does not have. Did you mean 'register_environments'?" in broken.error
    assert "register_commands, register_environments, register_generators, register_trainers" in broken.error
    assert cat.get("generator", "hf") and cat.get("environment", "math")
    with pytest.raises(ComponentError, match="unknown environment 'typo-env'.*typo-plugin: implements"):
        cat.get("environment", "typo-env")


def test_hook_with_wrong_arguments_marks_only_that_plugin_broken(register_plugin):
    register_plugin(_plugin(register_generators=lambda reg: None), "bad-args")
    cat = catalog()
    (broken,) = [p for p in cat.plugins if p.error]
    assert broken.name == "bad-args" and "reg" in broken.error and "register_generators" in broken.error
    assert cat.get("trainer", "fsdp")


def test_plugins_list_shows_a_misspelt_hook_as_broken_and_runs_still_work(tmp_path):
    """Through the CLI, with the plugin installed as an entry point (a throwaway distribution on sys.path)."""
    site = tmp_path / "site"
    (site / "typo_plugin").mkdir(parents=True)
    (site / "typo_plugin" / "__init__.py").write_text(
        "import rlx\n\n@rlx.hookimpl\ndef register_environment(registry):\n    pass\n")
    dist = site / "typo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: typo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlx]\ntypo = typo_plugin\n")
    import os

    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    listed = _cli("plugins", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    text = " ".join(listed.stdout.split())  # rich wraps lines
    assert "broken plugin typo (typo-plugin 0.1)" in text and "Did you mean 'register_environments'?" in text
    assert _cli("run", "--dry-run", env=env).returncode == 0


def test_same_name_twice_names_both_distributions(register_plugin):
    register_plugin(_plugin(register_generators=lambda registry: registry.add(
        "hf", config=_Cfg, factory="x:y")), "impostor")
    with pytest.raises(PluginError) as info:
        catalog()
    assert "rlx" in str(info.value) and "(in-process)" in str(info.value) and "'hf'" in str(info.value)


def test_broken_plugin_is_listed_and_does_not_stop_others():
    ep = md.EntryPoint(name="broken-one", value="rlx_no_such_module_xyz.plugin", group="rlx")
    manager = PluginManager()
    manager.load_builtins()
    manager.load_entry_points([ep])
    manager.check_pending()
    cat = manager.collect()
    broken = [p for p in cat.plugins if p.error]
    assert [p.name for p in broken] == ["broken-one"] and "ModuleNotFoundError" in broken[0].error
    assert cat.get("generator", "hf")  # the others still work
    with pytest.raises(ComponentError, match="broken-one"):
        cat.get("generator", "something-else")


def test_hook_raising_marks_plugin_broken(register_plugin):
    def register_environments(registry):
        raise RuntimeError("boom")

    register_plugin(_plugin(register_environments=register_environments), "exploding")
    cat = catalog()
    assert any(p.name == "exploding" and "boom" in p.error for p in cat.plugins if p.error)
    assert cat.get("trainer", "fsdp")


def test_disable_by_name(register_plugin, monkeypatch):
    register_plugin(_plugin(register_environments=lambda registry: registry.add(
        "blockme", config=_Cfg, factory="x:y")), "blockable")
    assert "blockme" in catalog().components["environment"]
    monkeypatch.setenv("RLX_DISABLE_PLUGINS", "other, blockable")
    assert "blockme" not in catalog().components["environment"]


def test_unknown_component_lists_available_and_suggests():
    with pytest.raises(ComponentError) as info:
        catalog().get("generator", "hff")
    assert "hf" in str(info.value) and "Did you mean 'hf'" in str(info.value)


def test_missing_engine_message(register_plugin):
    register_plugin(_plugin(register_generators=lambda registry: registry.add(
        "needs-engine", config=_Cfg, factory="x:y", requires=("no_such_engine_pkg",),
        install_hint="pip install 'rlx-fake[engine]'")), "fake")
    with pytest.raises(ComponentError, match=r"no_such_engine_pkg.*pip install 'rlx-fake\[engine\]'"):
        catalog().get("generator", "needs-engine").load_factory()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "rlx.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_plugins_list_json_does_not_import_engines_or_models():
    code = (
        "import sys, json; from rlx.cli import main\n"
        "sys.argv=['rlx','plugins','list','--json']\n"
        "try:\n    main()\nexcept SystemExit: pass\n"
        "heavy=[m for m in ('vllm','sglang','tensorrt_llm','transformers','torch','datasets','math_verify') if m in sys.modules]\n"
        "print('HEAVY', json.dumps(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    heavy_line = [line for line in out.stdout.splitlines() if line.startswith("HEAVY")][0]
    assert json.loads(heavy_line[5:]) == []
    payload = json.loads(out.stdout[: out.stdout.index("HEAVY")])
    names = {(c["kind"], c["name"]) for c in payload["components"]}
    assert ("generator", "hf") in names and ("trainer", "fsdp") in names
    for c in payload["components"]:
        assert c["distribution"] and c["version"]


@pytest.mark.skipif(
    not any(ep.name == "example-env" for ep in md.entry_points(group="rlx")),
    reason="examples/rlx-example-env is not pip-installed (scripts/dev.sh test installs it)",
)
def test_example_third_party_plugin_is_discovered_and_can_be_disabled():
    listed = json.loads(_cli("plugins", "list", "--json").stdout)
    echo = [c for c in listed["components"] if c["name"] == "echo"]
    assert echo and echo[0]["distribution"] == "rlx-example-env" and echo[0]["origin"] == "entry-point"
    blocked = json.loads(_cli("plugins", "list", "--json", env={"RLX_DISABLE_PLUGINS": "example-env"}).stdout)
    assert not [c for c in blocked["components"] if c["name"] == "echo"]
    dry = _cli("run", "--env", "echo", "--dry-run")
    assert dry.returncode == 0 and "echo" in dry.stdout and "rlx-example-env" in dry.stdout
