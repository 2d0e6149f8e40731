"""Runs inside TensorRT-LLM's Ray GPU workers (never in the rlx process): its RLHF worker extension plus the
one call rlx needs to address CUDA IPC weight handles to each worker's GPU.

Named in `LLM(ray_worker_extension_cls="rlx_trtllm.worker_extension.RlxWorkerExtension")`; imports tensorrt_llm.
"""

from __future__ import annotations

from tensorrt_llm._torch.utils import get_device_uuid
from tensorrt_llm.llmapi.rlhf_utils import WorkerExtension


class RlxWorkerExtension(WorkerExtension):
    """TensorRT-LLM's WorkerExtension (update_weights via IPC handles) + `rlx_device_uuid`."""

    def rlx_device_uuid(self) -> str:
        """The NVML UUID of this worker's GPU: the key its IPC handles are filed under."""
        return str(get_device_uuid(self.device_id))
