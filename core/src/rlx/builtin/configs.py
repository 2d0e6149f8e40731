"""Config models of the builtin components (pydantic only: importing this is cheap)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    micro_batch_size: int | None = Field(
        None,
        gt=0,
        description="rows per forward/backward: without a token budget the row count (None: 8, rows padded to the "
        "longest); with max_tokens_per_micro_batch an optional cap on rows per packed micro-batch",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=2,
        description="token budget of a train micro-batch: rows are unpadded and packed (several sequences per "
        "forward, attention within each) into as few micro-batches as fit, balanced across ranks. Must be >= the "
        "longest sequence (model.max_seq_len). None: padded micro-batches of micro_batch_size rows",
    )
    logprob_max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=2,
        description="token budget of a logprobs micro-batch (no activations are kept, so it can be larger). "
        "None: 4 x max_tokens_per_micro_batch",
    )
    attention: Literal["varlen", "varlen_sdpa", "sdpa", "flex_attention"] = Field(
        "varlen",
        description="attention over packed sequences: varlen (torch's FlashAttention varlen kernel on GPU, SDPA per "
        "sequence on CPU), varlen_sdpa (SDPA once per sequence everywhere), sdpa (a block-diagonal mask: N^2 work) or flex_attention (a document mask, compiled)",
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile each decoder layer and the LM head's softmax math (dynamic shapes). auto: on GPU "
        "(1.37x faster training on one H200, ~25 s of compilation in the first step), off on CPU",
    )
    device: str = Field("auto", description="auto | cpu | cuda")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    cpu_threads: int = Field(
        0, ge=0, description="torch intra-op threads for CPU training (0: leave torch's setting; 1 suits tiny models)"
    )
    activation_checkpointing: bool | Literal["selective"] = Field(
        False,
        description="true: recompute each decoder layer in backward (the least memory); selective: keep the outputs "
        "of the layer's matrix products and attention, recompute only the cheap ops between them (norms, "
        "activation, rotary embedding, residual adds: little extra compute, memory between the two); false: keep "
        "every activation",
    )
    reshard_after_forward: bool | Literal["auto"] = Field(
        "auto",
        description="free gathered layer weights after forward (ZeRO-3). False keeps them gathered (in the compute "
        "dtype) through all micro-batches of a call: one gather and cast per step instead of two per micro-batch. "
        "auto: true on several ranks, false on one (nothing to save there but the compute-dtype copy)",
    )
    logits_chunk_tokens: int = Field(
        1024, gt=0, description="tokens per LM-head chunk: bounds the (tokens, vocab) fp32 logits held at once"
    )
    cuda_stream: Literal["default", "own"] = Field(
        "default",
        description="own: the trainer's kernels go to a CUDA stream of its own, so that a generator in this process "
        "(another thread, the default stream: asynchronous GRPO with generator.in_process on one GPU) can run its "
        "kernels beside them instead of queueing behind them. No effect on CPU",
    )

    @model_validator(mode="after")
    def _budgets_go_together(self) -> FSDPTrainerConfig:
        if self.logprob_max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch is None:
            raise ValueError(
                "trainer.logprob_max_tokens_per_micro_batch is set but trainer.max_tokens_per_micro_batch is not: "
                "packing is on for both passes or neither; set trainer.max_tokens_per_micro_batch too"
            )
        return self

    @property
    def logprob_token_budget(self) -> int | None:
        """Tokens per logprobs micro-batch (None: padded row micro-batches)."""
        if self.max_tokens_per_micro_batch is None:
            return None
        return self.logprob_max_tokens_per_micro_batch or 4 * self.max_tokens_per_micro_batch
