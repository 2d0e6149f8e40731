"""Keep vLLM's caches (compile caches, config, assets) out of the home folder and /tmp: one folder per session."""

from __future__ import annotations

import os

import pytest

_CACHE_VARIABLES = (
    "VLLM_CACHE_ROOT",
    "VLLM_CONFIG_ROOT",
    "VLLM_ASSETS_CACHE",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
)


@pytest.fixture(scope="session", autouse=True)
def _vllm_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("vllm-cache")
    for name in _CACHE_VARIABLES:
        os.environ.setdefault(name, str(root / name.lower()))
    # Small test engines: 1 GiB of KV cache is plenty (unset, vLLM CPU reserves most of the RAM).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
