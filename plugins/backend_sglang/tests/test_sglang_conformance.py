"""rlx's Generator conformance suite run against the real sglang engine (GPU, sglang installed).

Skipped, with the reason shown, where sglang is not installed (sglang's engine needs CUDA, or a CPU with
AVX-512/AMX); the adapter's own logic is covered without the engine in test_sglang_adapter.py.
Last run: 2026-12-01 on one H200, sglang 0.5.14, torch 2.11.0+cu130: all passed (docs/backends/sglang.md).
"""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="sglang is not installed (pip install 'rlx-sglang[engine]', needs a GPU)")

from rlx.testing import GeneratorConformance  # noqa: E402

pytestmark = [pytest.mark.sglang, pytest.mark.gpu, pytest.mark.slow]


class TestSGLangConformance(GeneratorConformance):
    @pytest.fixture(scope="class")
    def make_generator(self):
        from rlx_sglang.generator import SGLangGenerator
        from rlx_sglang.plugin import SGLangConfig

        config = SGLangConfig(
            mem_fraction_static=0.3,
            # fp32 tiny model (head_dim 64): the Triton attention kernels take fp32; flashinfer does not
            attention_backend="triton",
            # per-request seeds are honoured only by sglang's deterministic sampler (the suite checks seeds)
            deterministic_inference=True,
            engine_args={"disable_cuda_graph": True},  # seconds of capture for a test-sized model
        )
        return lambda model_spec: SGLangGenerator(config, model=model_spec, seed=0)
