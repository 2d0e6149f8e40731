"""rlx's Generator conformance suite run against the real TensorRT-LLM engine (GPU, tensorrt_llm + ray installed).

Skipped, with the reason shown, where tensorrt_llm is not installed (its wheels come from NVIDIA's index and
need CUDA); the adapter's own logic is covered without the engine in test_trtllm_adapter.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "tensorrt_llm", reason="tensorrt_llm is not installed (pip install 'rlx-trtllm[engine]' from NVIDIA's index)"
)

from rlx.testing import GeneratorConformance  # noqa: E402

pytestmark = [pytest.mark.trtllm, pytest.mark.gpu, pytest.mark.slow]


class TestTRTLLMConformance(GeneratorConformance):
    @pytest.fixture(scope="class")
    def make_generator(self):
        from rlx_trtllm.generator import TRTLLMGenerator
        from rlx_trtllm.plugin import TRTLLMConfig

        # cuda_graph off: seconds of capture for a test-sized model; the suite checks correctness, not speed
        config = TRTLLMConfig(free_gpu_memory_fraction=0.2, cuda_graph=False, max_batch_size=32)
        return lambda model_spec: TRTLLMGenerator(config, model=model_spec, seed=0)
