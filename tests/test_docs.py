"""Every hook is documented in docs/plugins.md with its exact signature, and has a test of its own; every dotted
name the docs mention (`rlx.loop.GRPOLoop`) exists in the code."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

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


# source roots of the packages the docs name (read as source: nothing is imported, so no engine is needed)
SOURCE_ROOTS = [REPO / "core" / "src", *REPO.glob("plugins/*/src"), *REPO.glob("examples/*/src")]
DOTTED_NAME = re.compile(r"\brlx(?:_[a-z]+)?(?:\.[A-Za-z_]\w*)+")


def _module_file(parts: list[str]) -> Path | None:
    for root in SOURCE_ROOTS:
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def _defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Top-level names a module or class body defines (functions, classes, assignments, imports)."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                names[alias.asname or alias.name] = ast.Name(f"{node.module}.{alias.name}")  # followed by _resolves
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = _module_file(parts[:cut])
        if path is None:
            continue
        body: list[ast.stmt] = ast.parse(path.read_text()).body
        for index, name in enumerate(parts[cut:], start=cut):
            node = _defined_names(body).get(name)
            if node is None:
                return False
            if isinstance(node, ast.Name):  # re-exported: look where it comes from
                return _resolves(".".join([node.id, *parts[index + 1 :]]))
            if not isinstance(node, ast.ClassDef):
                return name == parts[-1]  # a function or value: what follows it is not checked
            body = node.body
        return True
    return False


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(REPO)) for p in REPO.glob("docs/**/*.md"))])
def test_dotted_names_in_docs_exist(doc):
    """Every `rlx.module.name` (or `rlx_<plugin>.…`) a page mentions is a module, class, function or method."""
    text = (REPO / doc).read_text()
    missing = sorted({name for name in DOTTED_NAME.findall(text) if not _resolves(name)})
    assert not missing, f"{doc} names what the code does not have: {missing}"
