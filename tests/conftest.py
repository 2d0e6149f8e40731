"""Shared fixtures: an isolated rlx cache and output folder per test session, and throwaway plugins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Keep the embedded model cache out of the home folder, but share it across the session's tests.
    if "RLX_CACHE" not in os.environ:
        os.environ["RLX_CACHE"] = str(tmp_path_factory.mktemp("rlx-cache"))


@pytest.fixture
def register_plugin():
    """Register in-process plugin objects for one test: `register_plugin(obj, "name")`."""
    from rlx.plugins import add_plugin, remove_plugin

    names: list[str] = []

    def _register(plugin: object, name: str) -> None:
        add_plugin(plugin, name)
        names.append(name)

    yield _register
    for name in names:
        remove_plugin(name)


REPO = Path(__file__).resolve().parents[1]
