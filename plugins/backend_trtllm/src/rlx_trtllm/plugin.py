"""Registers the `trtllm` generator. Cheap to import: only the pydantic Config, never tensorrt_llm or torch.

The implementation (`rlx_trtllm.generator`) is imported only when a run selects `--generator trtllm`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlx.plugins import hookimpl
from rlx.registry import ComponentRegistry

INSTALL_HINT = "pip install 'rlx-trtllm[engine]' --extra-index-url https://pypi.nvidia.com"


class TRTLLMConfig(BaseModel):
    """Options of the `trtllm` generator (engine settings map onto TensorRT-LLM's TorchLlmArgs)."""

    model_config = ConfigDict(extra="forbid")

    # --- engine (tensorrt_llm.LLM, PyTorch backend, Ray orchestrator) ----------------------------
    free_gpu_memory_fraction: float = Field(
        0.5, gt=0, le=1, description="share of the GPU memory left after loading that the KV cache takes"
    )
    enable_block_reuse: bool = Field(True, description="KV-cache prefix reuse (the n samples of a prompt share it)")
    tensor_parallel_size: int = Field(1, gt=0)
    max_seq_len: int | None = Field(None, gt=0, description="prompt + completion tokens (default: model.max_seq_len)")
    max_batch_size: int | None = Field(None, gt=0, description="None: TensorRT-LLM's default")
    max_num_tokens: int | None = Field(None, gt=0, description="tokens per engine step (None: TensorRT-LLM's default)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto: model.dtype")
    seed: int | None = Field(None, description="base of the per-request sampling seeds (default: the run seed)")
    cuda_graph: bool = Field(True, description="CUDA graphs for decoding (off: faster start, slower decode)")
    enable_sleep: bool = Field(True, description="needed for sleep()/wake_up() (virtual-memory tagged allocations)")
    approximate_logprobs: bool = Field(
        False,
        description="allow temperature != 1 together with top-k/top-p: logprobs are then renormalised over the "
        "kept tokens (TensorRT-LLM's 'processed' mode), not the contract's pre-filter quantity",
    )
    llm_args: dict[str, Any] = Field(
        default_factory=dict, description="further TorchLlmArgs passed through as-is (e.g. attn_backend)"
    )

    # --- weight updates ------------------------------------------------------------------------
    weight_bucket_mb: int = Field(512, gt=0, description="max size of one weight-update bucket (MiB)")

    @model_validator(mode="after")
    def _check(self) -> TRTLLMConfig:
        owned = {
            "model", "tokenizer", "trust_remote_code", "tensor_parallel_size", "dtype", "backend",
            "orchestrator_type", "ray_worker_extension_cls", "enable_sleep", "max_seq_len", "max_batch_size",
            "max_num_tokens", "kv_cache_config", "sampler_type",
        }  # fmt: skip
        clash = sorted(owned & set(self.llm_args))
        if clash:
            raise ValueError(f"llm_args must not set {clash}: they are set from the generator options")
        return self


@hookimpl
def register_generators(registry: ComponentRegistry) -> None:
    registry.add(
        "trtllm",
        config=TRTLLMConfig,
        factory="rlx_trtllm.generator:TRTLLMGenerator",
        description="TensorRT-LLM LLM API (PyTorch backend): n samples with logprobs, IPC weight updates, sleep/wake",
        requires=("tensorrt_llm",),
        install_hint=INSTALL_HINT,
    )
