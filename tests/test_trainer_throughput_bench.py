"""benchmarks/trainer_throughput.py's --profile: kernel names sorted into categories, and the profile written beside
the JSON (a tiny CPU run: the host-side path; on CPU no device events are counted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "trainer_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("trainer_throughput_bench", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize(
    ("kernel", "category"),
    [
        ("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>", "attention"),
        ("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0", "triton (compiled)"),
        ("Memcpy DtoD (Device -> Device)", "copy / fill"),
        ("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL", "communication"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "copy / fill"),
        ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>", "eager elementwise / reduce"),
        ("some_unknown_kernel", "other"),
    ],
)
def test_kernel_names_fall_into_their_category(bench, kernel: str, category: str) -> None:
    assert bench.kernel_category(kernel) == category


def test_profile_runs_after_the_timed_rows_and_is_saved(bench, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "tt.json"
    argv = ["trainer_throughput.py", "--tiny", "--lengths", "longtail", "--batch", "8", "--anchor", "none",
            "--warmup", "0", "--steps", "1", "--profile", "--work-dir", str(tmp_path), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    result = json.loads(out.read_text())
    for call in ("train_step", "logprobs"):
        profile = result["profile"][call]
        assert profile["wall_s"] > 0 and profile["cpu_ops"] > 0
        assert profile["device_busy_s"] == 0.0  # CPU only: no device events
    assert "== train_step" in (tmp_path / "tt.json.profile.txt").read_text()
