"""Registers the `sglang` generator. Cheap to import: only the pydantic Config, never sglang or torch.

The implementation (`rlx_sglang.generator`) is imported only when a run selects `--generator sglang`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlx.plugins import hookimpl
from rlx.registry import ComponentRegistry

INSTALL_HINT = "pip install 'rlx-sglang[engine]'"


class SGLangConfig(BaseModel):
    """Options of the `sglang` generator (engine settings map onto sglang's ServerArgs)."""

    model_config = ConfigDict(extra="forbid")

    # --- engine (sglang ServerArgs) -------------------------------------------------------------
    mem_fraction_static: float | None = Field(
        None, gt=0, lt=1, description="GPU memory fraction for weights + KV cache (None: sglang decides)"
    )
    tp_size: int = Field(1, gt=0, description="tensor-parallel GPUs per engine")
    context_length: int | None = Field(
        None, gt=0, description="max prompt + completion tokens (default: model.max_seq_len)"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto: model.dtype")
    attention_backend: str | None = Field(
        None, description="e.g. flashinfer | fa3 | triton | torch_native (None: sglang decides)"
    )
    sampling_backend: Literal["flashinfer", "pytorch"] | None = None
    grammar_backend: str = Field(
        "none",
        description="structured-output backend (xgrammar | outlines | llguidance | none); rlx sends no grammars, "
        "so none skips building one at start-up and the xgrammar dependency",
    )
    seed: int | None = Field(None, description="engine random seed (default: the run seed)")
    base_gpu_id: int = Field(0, ge=0, description="first GPU the engine uses")
    enable_memory_saver: bool = Field(True, description="needed for sleep()/wake_up() (torch_memory_saver)")
    sleep_weights: Literal["keep", "backup", "drop"] = Field(
        "keep",
        description="what sleep() does with the weights (the KV cache and CUDA graphs are always released): "
        "keep = leave them on the GPU (no copy); backup = move them to CPU memory and back (frees their GPU "
        "memory, ~2 s per step for 1.5B on an H200); drop = free them without a copy, so update_weights() must "
        "push every weight before the next wake_up() (an error otherwise)",
    )
    deterministic_inference: bool = Field(False, description="batch-invariant kernels; per-request seeds are honoured")
    skip_tokenizer_init: bool = Field(
        False, description="token ids in/out only; then only the model config's EOS ids stop, not the tokenizer's"
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="further sglang ServerArgs passed through as-is (e.g. disable_cuda_graph)"
    )

    # --- weight updates ------------------------------------------------------------------------
    weight_sync: Literal["tensor", "nccl"] = Field(
        "tensor", description="tensor: update_weights_from_tensor (same node, CUDA IPC); nccl: broadcast to the engine"
    )
    weight_format: Literal["flattened_bucket", "named_tensors"] = Field(
        "flattened_bucket", description="flattened_bucket: one flat tensor per bucket (fewer IPC handles)"
    )
    weight_bucket_mb: int = Field(512, gt=0, description="max size of one weight-update bucket (MiB)")
    nccl_master_address: str = Field("127.0.0.1", description="rendezvous address of the NCCL weight group")
    nccl_master_port: int | None = Field(None, gt=0, lt=65536, description="None: a free port is picked")
    nccl_device: str = Field("cuda:0", description="device of this process that sends the weights (nccl only)")

    @model_validator(mode="after")
    def _check(self) -> SGLangConfig:
        # these keys have their own typed option; passing them twice would be ambiguous
        owned = {
            "model_path", "tokenizer_path", "mem_fraction_static", "tp_size", "context_length", "dtype",
            "attention_backend", "sampling_backend", "grammar_backend", "random_seed", "base_gpu_id",
            "enable_memory_saver", "enable_weights_cpu_backup", "enable_deterministic_inference",
            "skip_tokenizer_init", "trust_remote_code",
        }  # fmt: skip
        clash = sorted(owned & set(self.engine_args))
        if clash:
            raise ValueError(f"engine_args must not set {clash}: use the generator options of the same name instead")
        return self


@hookimpl
def register_generators(registry: ComponentRegistry) -> None:
    registry.add(
        "sglang",
        config=SGLangConfig,
        factory="rlx_sglang.generator:SGLangGenerator",
        description="SGLang offline engine: n samples with logprobs, bucketed in-place weight updates, sleep/wake",
        requires=("sglang",),
        install_hint=INSTALL_HINT,
    )
