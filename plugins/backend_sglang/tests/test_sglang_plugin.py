"""The `sglang` plugin as rlx sees it: listed through its entry point without importing sglang, its Config
validated by the core, and a clear install message where the engine is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from rlx.config import ComponentSection, component_config
from rlx.errors import ComponentError, ConfigError
from rlx.plugins import catalog
from rlx_sglang.plugin import SGLangConfig


def test_catalog_lists_sglang_from_its_distribution():
    spec = catalog().get("generator", "sglang")
    assert spec.plugin.distribution == "rlx-sglang" and spec.plugin.origin == "entry-point"
    assert spec.config is SGLangConfig and spec.factory == "rlx_sglang.generator:SGLangGenerator"
    assert spec.requires == ("sglang",)


def test_listing_plugins_imports_neither_the_engine_nor_the_adapter():
    code = (
        "import sys; from rlx.plugins import catalog; catalog(); "
        "bad = [m for m in ('sglang', 'rlx_sglang.generator') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_missing_engine_fails_at_selection_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sglang" else real(name, *a))
    spec = catalog().get("generator", "sglang")
    with pytest.raises(ComponentError) as info:
        spec.load_factory()
    message = str(info.value)
    assert "needs the Python package 'sglang'" in message and "pip install 'rlx-sglang[engine]'" in message


def test_config_is_validated_by_the_core():
    section = ComponentSection(name="sglang", tp_size=2, mem_fraction_static=0.6)
    config = component_config(section, SGLangConfig, "generator")
    assert config.tp_size == 2 and config.mem_fraction_static == 0.6
    with pytest.raises(ConfigError, match="unknown config key 'generator.mem_fraction'.*mem_fraction_static"):
        component_config(ComponentSection(name="sglang", mem_fraction=0.5), SGLangConfig, "generator")
    with pytest.raises(ConfigError, match="mem_fraction_static"):
        component_config(ComponentSection(name="sglang", mem_fraction_static=1.5), SGLangConfig, "generator")


def test_engine_args_cannot_shadow_typed_options():
    with pytest.raises(ValueError, match=r"engine_args must not set \['tp_size'\]"):
        SGLangConfig(engine_args={"tp_size": 4})
