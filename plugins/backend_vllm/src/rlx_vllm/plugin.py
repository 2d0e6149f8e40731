"""Registers the `vllm` generator. Cheap to import: only the pydantic Config, never vllm or torch.

The engine itself lives in `rlx_vllm.generator`, imported only when a run selects `--generator vllm`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlx.plugins import hookimpl
from rlx.registry import ComponentRegistry


class VLLMConfig(BaseModel):
    """Options of the `vllm` generator (the `generator:` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="share of GPU memory vLLM may take (weights + KV cache); keep room for the trainer"
    )
    max_model_len: int | None = Field(None, gt=0, description="prompt + completion tokens; default: model.max_seq_len")
    tensor_parallel_size: int = Field(1, gt=0)
    enforce_eager: bool | None = Field(None, description="no CUDA graphs / torch.compile; default: on for CPU")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: model.dtype, then vLLM's choice"
    )
    seed: int | None = Field(None, description="engine seed; default: the run seed")
    enable_sleep_mode: bool | None = Field(
        None, description="free weights + KV cache between rollouts (CUDA only); default: on with CUDA"
    )
    drop_weights_before_push: bool = Field(
        True,
        description="when the loop sleeps right before a full weight push (the synchronous colocated loop), discard "
        "the weights (vLLM sleep level 2) instead of copying them to host memory and back (level 1), which the push "
        "overwrites anyway; until a complete push the generator refuses to wake or sample. Refused (level 1) for "
        "quantized, multimodal and speculative-decoding models",
    )
    weight_bucket_mb: int = Field(512, gt=0, description="weight updates travel in buckets of at most this size")
    weight_sync: Literal["auto", "direct", "rpc", "ipc"] = Field(
        "auto",
        description="direct: hand the tensors to the in-process worker (in_process=true, TP=1); "
        "rpc: send each bucket's bytes to every worker with collective_rpc; "
        "ipc: send only a handle (CUDA IPC, or a shared-memory file for CPU tensors) for workers in other "
        "processes; auto: direct in process, ipc with one worker in another process, else rpc",
    )
    in_process: bool = Field(
        True, description="run the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): fast start-up"
    )
    logprobs_before_filtering: bool = Field(
        True,
        description="report log p under softmax(logits / T) before top-k/top-p (the trainer's quantity); "
        "False keeps vLLM's processed_logprobs, renormalised after top-k/top-p",
    )
    cpu_kv_cache_gb: int = Field(
        4, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE, GiB) unless already set"
    )
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = Field(None, gt=0, description="sequences decoded together; default: vLLM's")


@hookimpl
def register_generators(registry: ComponentRegistry) -> None:
    registry.add(
        "vllm",
        config=VLLMConfig,
        factory="rlx_vllm.generator:VLLMGenerator",
        description="vLLM offline engine: in-place bucketed weight updates, sleep/wake when colocated",
        requires=("vllm",),
        install_hint="pip install 'rlx-vllm[cpu]'  (or [cuda] on a GPU host)",
    )
