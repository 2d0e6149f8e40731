"""The `fsdp` trainer's model pieces: the FSDP root (decoder + chunked LM-head log-probabilities), varlen attention
for packed sequences, and finding the decoder layers. No torch.distributed here.

Attention for packed micro-batches (`FSDPTrainerConfig.attention`):
- `varlen` (default): the HF decoder runs with this module's attention function, which gets the sequence
  boundaries (`cu_seq_lens_q`, as flash-attn's varlen kwargs) and calls torch's own FlashAttention-2 varlen kernel
  (`torch.nn.attention.varlen.varlen_attn`, CUDA, bf16/fp16): attention costs sum(L_i^2), no mask is built.
  Elsewhere (CPU, fp32) it runs causal SDPA once per sequence: exact, and fine for tiny CPU models.
- `varlen_sdpa`: the same function, always SDPA once per sequence (bounds as host ints: no sync per layer).
- `sdpa` / `flex_attention`: transformers' own packed-sequence support (it finds the boundaries from the restarted
  position ids): SDPA with a (N, N) block-diagonal mask (attention cost N^2), or flex attention with a document
  block mask (compiled by transformers). Kept to compare against; see docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

VARLEN_ATTENTION = "rlx_varlen"
#: the same as "rlx_varlen", but always SDPA once per sequence (cuDNN/flash kernels per sequence on GPU)
VARLEN_SDPA_ATTENTION = "rlx_varlen_sdpa"
#: attention kwarg: the packed sequences' starts as host ints (n + 1,), so per-sequence attention needs no host sync
SEQUENCE_BOUNDS = "rlx_sequence_bounds"


class _LMHeadLogprobs(torch.autograd.Function):
    """LM head + log-softmax on one chunk of tokens, with a hand-written backward.

    Saves only the chunk's hidden states and log-partition (never the (n, V) logits): backward recomputes
    the logits once and forms d logp / d logits = onehot(target) - softmax directly. Also returns the
    entropy of each next-token distribution (a metric: no gradient). The softmax math around the two matmuls
    is `HeadMath`'s (fused by torch.compile when the trainer compiles).
    hidden: (n, H), weight: (V, H), bias: (V,) or None, targets: (n,) int64
    -> log p(target) (n,) float32, entropy (n,) float32 (empty when not asked for).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        inv_temperature: float,
        with_entropy: bool,
        math: HeadMath,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(hidden, weight, bias)  # (n, V) in the compute dtype
        target_logprobs, log_z, entropy = math.forward(logits, targets, inv_temperature, with_entropy)
        del logits
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.inv_temperature = inv_temperature
        ctx.math = math
        ctx.mark_non_differentiable(entropy)
        return target_logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor, _grad_entropy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        logits = F.linear(hidden, weight, bias)
        grad_logits = ctx.math.grad_logits(logits, log_z, targets, grad_logprobs, ctx.inv_temperature)  # (n, V)
        del logits
        grad_hidden = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.t() @ hidden if ctx.needs_input_grad[1] else None
        grad_bias = grad_logits.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _head_forward(
    logits: torch.Tensor, targets: torch.Tensor, inv_temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, V) logits, (n,) targets -> log p(target) (n,), log Z (n,), entropy (n,) or empty; fp32 on logits / T."""
    scaled = _upcast(logits) * inv_temperature
    log_z = torch.logsumexp(scaled, dim=-1)
    target_logprobs = scaled.gather(-1, targets[:, None]).squeeze(-1) - log_z
    if not with_entropy:
        return target_logprobs, log_z, scaled.new_empty(0)
    # H = log Z - sum_v p_v * logit_v
    entropy = log_z - (torch.exp(scaled - log_z[:, None]) * scaled).sum(-1)
    return target_logprobs, log_z, entropy


def _head_grad_logits(
    logits: torch.Tensor, log_z: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor, inv_temperature: float
) -> torch.Tensor:
    """d loss / d logits (n, V) in the logits' dtype: grad * (onehot(target) - softmax(logits / T)) / T."""
    probs = torch.exp(_upcast(logits) * inv_temperature - log_z[:, None])
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    onehot = (vocab[None, :] == targets[:, None]).to(probs.dtype)
    return ((onehot - probs) * (grad.to(probs.dtype) * inv_temperature)[:, None]).to(logits.dtype)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for the softmax math (fp64 stays fp64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class HeadMath:
    """The elementwise/reduction math of the chunked LM head, eager or compiled (one fused kernel each instead
    of several passes over (n, V) fp32 temporaries)."""

    def __init__(self, compiled: bool = False) -> None:
        self.forward = torch.compile(_head_forward, dynamic=True) if compiled else _head_forward
        self.grad_logits = torch.compile(_head_grad_logits, dynamic=True) if compiled else _head_grad_logits


class PolicyLogprobs(nn.Module):
    """The FSDP root: HF decoder, then the LM head on the scored positions only, chunk by chunk.

    Wrapping the whole computation in one root `forward` lets FSDP2's root hooks gather (and reduce the
    gradients of) the embeddings, final norm and LM head around it. Only positions whose next token is scored
    (completion tokens) go through the LM head, and each chunk's logits are freed after its forward and
    recomputed in backward, so at most one chunk of (tokens, vocab) logits is alive.
    """

    def __init__(self, hf_model: nn.Module, chunk_tokens: int, *, compile_head: bool = False) -> None:
        super().__init__()
        self.hf = hf_model
        self.chunk_tokens = chunk_tokens
        self.head_math = HeadMath(compiled=compile_head)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        score_index: torch.Tensor,
        temperature: float,
        with_entropy: bool,
        attention_kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, position_ids, attention_mask: (b, T) (packed: b = 1 and position ids restart per sequence;
        attention_mask None = causal, or what `attention_kwargs` says); score_index: (S,) positions of the flattened
        (b * T) input whose hidden state predicts the next token, `input_ids.view(-1)[score_index + 1]`
        -> log p(that token) (S,) float32 on logits / temperature, and its distribution's entropy (S,) (empty
        unless with_entropy)."""
        decoder = getattr(self.hf, self.hf.base_model_prefix)
        hidden = decoder(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **attention_kwargs,
        ).last_hidden_state
        scored_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, score_index)  # (S, H)
        targets = input_ids.reshape(-1).index_select(0, score_index + 1)  # (S,)
        head = self.hf.get_output_embeddings()
        logprob_chunks, entropy_chunks = [], []
        for start in range(0, max(int(score_index.shape[0]), 1), self.chunk_tokens):
            stop = start + self.chunk_tokens
            args = (scored_hidden[start:stop], head.weight, head.bias, targets[start:stop], 1.0 / temperature)
            lp, ent = _LMHeadLogprobs.apply(*args, with_entropy, self.head_math)
            logprob_chunks.append(lp)
            entropy_chunks.append(ent)
        return torch.cat(logprob_chunks), torch.cat(entropy_chunks)


# ------------------------------------------------------------------------------------------ varlen attention


def _find_torch_varlen() -> tuple[Any, frozenset[str]] | None:
    """torch's FlashAttention varlen entry point and its keyword names (they changed between releases)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


# Looked up once at import: a cached function called inside a torch.compile'd layer makes dynamo warn and trace it.
_TORCH_VARLEN = _find_torch_varlen()


def uses_flash_varlen(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `varlen` attention runs torch's FlashAttention kernel here (else: SDPA per sequence)."""
    return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and _TORCH_VARLEN is not None


def varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    rlx_sequence_bounds: torch.Tensor | None = None,
    per_sequence: bool = False,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function for packed sequences (registered as "rlx_varlen").

    query: (1, Hq, N, D); key, value: (1, Hkv, N, D); cu_seq_lens_q: (n + 1,) int32 sequence starts in the N
    packed tokens, max_length_q the longest -> (1, N, Hq, D), causal within each sequence only.
    Without boundaries (an unpacked batch) it is transformers' SDPA attention. per_sequence (the
    "rlx_varlen_sdpa" registration): SDPA once per sequence even where the FlashAttention varlen kernel exists.
    """
    if sliding_window is not None or dropout:
        raise NotImplementedError("varlen attention supports neither sliding-window attention nor dropout")
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, is_causal=True)
    if query.shape[0] != 1:
        raise ValueError(f"packed sequences come as one row, got a batch of {query.shape[0]}")
    if not per_sequence and uses_flash_varlen(query.device, query.dtype):
        out = _flash_varlen(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                            cu_seq_lens_q, int(max_length_q or query.shape[2]), scaling)  # fmt: skip
        return out.unsqueeze(0), None
    bounds = rlx_sequence_bounds if rlx_sequence_bounds is not None else cu_seq_lens_q
    return _sdpa_per_sequence(query, key, value, bounds, scaling), None


@torch.compiler.disable
def _sdpa_per_sequence(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """SDPA once per packed sequence -> (1, N, Hq, D). Outside torch.compile: the loop depends on how many sequences
    there are and where they start, which a compiled layer would otherwise recompile for at every new packing.
    bounds: (n + 1,) sequence starts, a CPU tensor (rlx_sequence_bounds: no device sync) or cu_seq_lens_q."""
    starts = bounds.tolist()
    parts = [
        F.scaled_dot_product_attention(
            query[:, :, start:stop], key[:, :, start:stop], value[:, :, start:stop],
            is_causal=True, scale=scaling, enable_gqa=True,
        )  # fmt: skip
        for start, stop in zip(starts[:-1], starts[1:], strict=True)
    ]
    return torch.cat(parts, dim=2).transpose(1, 2)


def _flash_varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, scale: float | None
) -> torch.Tensor:
    """(N, Hq, D), (N, Hkv, D) x2 -> (N, Hq, D) causal FlashAttention over the sequences of `cu_seqlens`."""
    varlen_attn, names = _TORCH_VARLEN  # type: ignore[misc]
    options: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in names else {"is_causal": True}
    if "scale" in names:
        options["scale"] = scale
    elif scale is not None and abs(scale - query.shape[-1] ** -0.5) > 1e-12:
        raise NotImplementedError("this torch's varlen_attn has no `scale` argument; the model needs one")
    if query.shape[1] != key.shape[1] and "enable_gqa" in names:
        options["enable_gqa"] = True
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    if query.shape[1] != key.shape[1] and "enable_gqa" not in names and not _native_gqa.get("works", True):
        repeat = query.shape[1] // key.shape[1]  # give every query head its own key/value head
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    try:
        return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, **options)
    except RuntimeError:
        # a torch without `enable_gqa` whose wrapper rejects fewer key/value heads (the kernel takes them)
        if query.shape[1] == key.shape[1] or "enable_gqa" in names or "works" in _native_gqa:
            raise
        _native_gqa["works"] = False
        return _flash_varlen(query, key, value, cu_seqlens, max_len, scale)


_native_gqa: dict[str, bool] = {}


def register_varlen_attention() -> None:
    """Make "rlx_varlen" a transformers attention implementation (idempotent). Deliberately without a mask
    function: transformers then builds no (N, N) mask and hands the attention function the boundaries."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    AttentionInterface.register(VARLEN_SDPA_ATTENTION, functools.partial(varlen_attention, per_sequence=True))


# ------------------------------------------------------------------------------------------ decoder layers


def _op_overloads(namespace: str, names: tuple[str, ...]) -> set[Any]:
    """The overloads of the ops `torch.ops.<namespace>.<name>` that this torch has (others are skipped)."""
    found = set()
    for name in names:
        try:
            packet = getattr(getattr(torch.ops, namespace), name)
        except (AttributeError, RuntimeError):
            continue
        found.update(getattr(packet, overload) for overload in packet.overloads())
    return found


#: what selective activation checkpointing keeps: the outputs of matrix products and attention kernels (the costly
#: ops); everything else in a decoder layer is recomputed in backward
SAVED_BY_SELECTIVE_CHECKPOINTING = frozenset(
    _op_overloads("aten", ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm", "_scaled_dot_product_flash_attention",
                           "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
                           "_scaled_dot_product_cudnn_attention", "_flash_attention_forward",
                           "_efficient_attention_forward", "_cudnn_attention_forward"))
    | _op_overloads("torch_attn", ("_varlen_attn",))  # torch's FlashAttention varlen (rlx's `varlen` attention)
)  # fmt: skip


def _keep_products_and_attention(_ctx: Any, op: Any, *_args: Any, **_kwargs: Any) -> CheckpointPolicy:
    if op in SAVED_BY_SELECTIVE_CHECKPOINTING:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpointed(forward: Any, *, selective: bool = False) -> Any:
    """Wrap a decoder layer's forward so its activations are recomputed in backward (names unchanged). selective:
    torch's selective activation checkpointing, which keeps the outputs of matrix products and attention
    (`SAVED_BY_SELECTIVE_CHECKPOINTING`) and recomputes the rest."""
    options: dict[str, Any] = {}
    if selective:
        options["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_products_and_attention)

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **options, **kwargs)
        return forward(*args, **kwargs)

    return run


def decoder_layers(hf_model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (the model's `_no_split_modules` classes): one FSDP unit each."""
    names = set(getattr(hf_model, "_no_split_modules", None) or ())
    layers = [m for m in hf_model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(hf_model).__name__} (_no_split_modules={names})")
    return layers
