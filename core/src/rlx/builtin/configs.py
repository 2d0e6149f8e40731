"""Config models of the builtin components (pydantic only: importing this is cheap)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HFGeneratorConfig(BaseModel):
    """Options of the builtin `hf` generator (transformers generate)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(64, gt=0, description="sequences generated together (prompts x n)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the model section's dtype, else bf16 on GPU and fp32 on CPU"
    )
    attn_implementation: str | None = Field(
        None, description="transformers attention kernel: sdpa | eager | flash_attention_2 (None: its default)"
    )
    cpu_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads while generating on CPU (0: leave torch's setting). 1 is fastest for "
        "tiny models, whose decode steps are too small to split, and far faster on a busy machine",
    )
    cache_implementation: str | None = Field(
        None, description="transformers KV cache: None (dynamic) | static (GPU: lets transformers compile decoding)"
    )


class FSDPTrainerConfig(BaseModel):
    """Options of the builtin `fsdp` trainer (AdamW, linear warm-up then constant LR, FSDP2 sharding)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up (optimizer steps), then constant")
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    micro_batch_size: int = Field(8, gt=0, description="sequences per forward/backward")
    device: str = Field("auto", description="auto | cpu | cuda")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    cpu_threads: int = Field(
        0, ge=0, description="torch intra-op threads for CPU training (0: leave torch's setting; 1 suits tiny models)"
    )
    activation_checkpointing: bool = Field(False, description="recompute each decoder layer in backward")
    reshard_after_forward: bool = Field(True, description="free gathered layer weights after forward (ZeRO-3)")
    logits_chunk_tokens: int = Field(
        1024, gt=0, description="tokens per LM-head chunk: bounds the (tokens, vocab) fp32 logits held at once"
    )
