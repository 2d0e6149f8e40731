"""The plugin's registration and Config: cheap to import, strict options. Needs no engine."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from rlx_vllm.plugin import VLLMConfig


def test_importing_the_plugin_imports_no_engine() -> None:
    code = (
        "import sys, rlx.plugins; rlx.plugins.catalog(); import rlx_vllm.plugin; "
        "heavy = sorted(m for m in ('vllm', 'torch') if m in sys.modules); print(heavy); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_registered_through_the_entry_point() -> None:
    from rlx.plugins import catalog

    spec = catalog().get("generator", "vllm")
    assert spec.config is VLLMConfig
    assert spec.factory == "rlx_vllm.generator:VLLMGenerator"
    assert spec.requires == ("vllm",)
    assert spec.plugin.distribution == "rlx-vllm"
    assert "[cpu]" in spec.install_hint and "[cuda]" in spec.install_hint


def test_config_rejects_unknown_and_bad_options() -> None:
    assert VLLMConfig().tensor_parallel_size == 1
    with pytest.raises(ValidationError, match="gpu_memory_utilisation"):
        VLLMConfig(gpu_memory_utilisation=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        VLLMConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValidationError):
        VLLMConfig(weight_sync="tcp")  # type: ignore[arg-type]


def test_component_config_names_the_typo() -> None:
    from rlx.config import ComponentSection, component_config
    from rlx.errors import ConfigError

    section = ComponentSection(name="vllm", enforce_eagre=True)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="enforce_eager"):
        component_config(section, VLLMConfig, "generator")
