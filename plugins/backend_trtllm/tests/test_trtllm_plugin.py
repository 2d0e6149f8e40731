"""The `trtllm` plugin as rlx sees it: listed through its entry point without importing tensorrt_llm, its
Config validated by the core, and a clear install message where the engine is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from rlx.config import ComponentSection, component_config
from rlx.errors import ComponentError, ConfigError
from rlx.plugins import catalog
from rlx_trtllm.plugin import TRTLLMConfig


def test_catalog_lists_trtllm_from_its_distribution():
    spec = catalog().get("generator", "trtllm")
    assert spec.plugin.distribution == "rlx-trtllm" and spec.plugin.origin == "entry-point"
    assert spec.config is TRTLLMConfig and spec.factory == "rlx_trtllm.generator:TRTLLMGenerator"
    assert spec.requires == ("tensorrt_llm",)


def test_listing_plugins_imports_neither_the_engine_nor_the_adapter():
    code = (
        "import sys; from rlx.plugins import catalog; catalog(); "
        "bad = [m for m in ('tensorrt_llm', 'rlx_trtllm.generator') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_missing_engine_fails_at_selection_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt_llm" else real(name, *a)
    )
    with pytest.raises(ComponentError) as info:
        catalog().get("generator", "trtllm").load_factory()
    message = str(info.value)
    assert "needs the Python package 'tensorrt_llm'" in message
    assert "pip install 'rlx-trtllm[engine]' --extra-index-url" in message


def test_config_is_validated_by_the_core():
    config = component_config(ComponentSection(name="trtllm", free_gpu_memory_fraction=0.3), TRTLLMConfig, "generator")
    assert config.free_gpu_memory_fraction == 0.3
    with pytest.raises(ConfigError, match="unknown config key 'generator.tp_size'.*tensor_parallel_size"):
        component_config(ComponentSection(name="trtllm", tp_size=2), TRTLLMConfig, "generator")
