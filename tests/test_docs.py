"""Every hook is documented in docs/plugins.md with its exact signature, and has a test of its own."""

from __future__ import annotations

import inspect
import re

import pytest

from rlx import hookspecs

from .conftest import REPO

HOOKS = sorted(name for name, obj in vars(hookspecs).items() if name.startswith("register_") and callable(obj))


def _signature(name: str) -> str:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def test_there_are_hooks():
    assert set(HOOKS) == {"register_generators", "register_trainers", "register_environments", "register_algorithms",
                          "register_commands"}


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_exact_signature(hook):
    docs = (REPO / "docs" / "plugins.md").read_text()
    assert f"### {_signature(hook)}" in docs, f"docs/plugins.md must have a heading '### {_signature(hook)}'"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = (REPO / "tests" / "test_plugins.py").read_text()
    assert re.search(rf"def test_hook_{hook}\b", tests), f"tests/test_plugins.py needs test_hook_{hook}"


def test_readme_run_paths_are_what_runs_write():
    """Every `runs/<name>` the README mentions is the output_dir of a shipped recipe (not, e.g., runs/default)."""
    import yaml

    readme = (REPO / "README.md").read_text()
    mentioned = set(re.findall(r"\bruns/([\w.-]+)", readme))
    written = {yaml.safe_load(p.read_text()).get("output_dir", "") for p in (REPO / "recipes").glob("*.yaml")}
    assert mentioned and mentioned <= {w.removeprefix("runs/") for w in written}, mentioned


def test_environment_docs_cover_the_exchanged_types():
    docs = (REPO / "docs" / "plugins.md").read_text()
    for needle in ("class Problem:", "class Score:", "correct: bool | None", "class Completion:", "class SamplingParams:",
                   "metadata[\"solution\"]", "metadata[\"distractors\"]", "EnvironmentConformance",
                   "GeneratorConformance", "What `score(problems, completions)` receives"):
        assert needle in docs, needle
