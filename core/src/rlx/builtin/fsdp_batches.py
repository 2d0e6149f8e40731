"""Micro-batches of the `fsdp` trainer: right-padded (B, T) rows -> packed sequences (or padded row blocks) on the
device, and the indices that scatter per-token results back to (rows, T).

Packed: the attended tokens of each row are concatenated into one (1, N) row, position ids restart at every
sequence, and the attention gets the boundaries. Padded (legacy, `micro_batch_size` rows): rows as they are,
trimmed to their last attended column. Either way only the positions that predict a completion token are scored,
and `MicroBatch.scatter` puts their log-probabilities at (row, column) of the micro-batch's (rows, width) view.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from rlx.builtin.fsdp_model import SEQUENCE_BOUNDS
from rlx.interfaces import TokenBatch


@dataclass
class MicroBatch:
    """One forward (and backward) on the device.

    rows:            (n,) int64 rows of the shard's batch it holds (empty for a padding micro-batch)
    input_ids:       (1, N) packed, or (n, width) padded rows
    position_ids:    (1, N) restarted per sequence, or None (0.. per row)
    attention_mask:  (n, width) for padded rows that are not right-padded, else None (causal)
    attention_kwargs: the sequence boundaries for varlen attention (cu_seq_lens_q/k (n+1,) int32,
                     max_length_q/k, and with host_bounds the same starts as a CPU tensor under SEQUENCE_BOUNDS), else empty
    score_index:     (S,) flat positions of input_ids whose hidden state predicts a scored token (at + 1)
    scatter_rows, scatter_cols: (S,) where each scored log-probability goes in the (n, width) view
    batch:           the rows' fields, (n, width), for loss_fn (a zero-weight stand-in for a padding one)
    tokens:          real tokens in it (0 for padding)
    """

    rows: torch.Tensor
    input_ids: torch.Tensor
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    attention_kwargs: dict[str, Any]
    score_index: torch.Tensor
    scatter_rows: torch.Tensor
    scatter_cols: torch.Tensor
    batch: TokenBatch
    tokens: int

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(S,) per scored token -> (n, width), zero elsewhere (differentiable)."""
        shape = tuple(self.batch.input_ids.shape)
        out = values.new_zeros(shape)
        return out.index_put((self.scatter_rows, self.scatter_cols), values)


def map_fields(batch: TokenBatch, fn: Any) -> TokenBatch:
    """The same batch type with `fn` applied to every tensor field."""
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(**{k: (fn(v) if isinstance(v, torch.Tensor) else v) for k, v in values.items()})


def _fields(batch: TokenBatch, rows: torch.Tensor, width: int) -> TokenBatch:
    """`rows` of every (B, ...) field, and the first `width` columns of the (B, T) ones."""
    return map_fields(batch, lambda v: v.index_select(0, rows)[:, :width] if v.dim() == 2 else v.index_select(0, rows))


def padding_fields(batch: TokenBatch, width: int = 2) -> TokenBatch:
    """One row that runs the same collectives as a real one but contributes nothing: token 0 throughout, every
    position attended, the last one counted as completion, and zero loss weights and advantages (CPU)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            shape = (1, width) if value.dim() == 2 else (1,)
            value = torch.zeros(shape, dtype=value.dtype)
        values[f.name] = value
    values["attention_mask"] = torch.ones(1, width, dtype=batch.attention_mask.dtype)
    values["completion_mask"] = torch.zeros(1, width, dtype=batch.completion_mask.dtype)
    values["completion_mask"][0, -1] = 1
    return type(batch)(**values)


def _scored(attention: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """(n, T) bool: attended completion tokens that are not their row's first attended token (one predicts them)."""
    return attention & completion.bool() & (torch.cumsum(attention, dim=1) >= 2)


def _width(attention: torch.Tensor) -> int:
    """Columns up to the last attended one (at least 2)."""
    columns = torch.arange(1, attention.shape[1] + 1)
    return max(int((attention * columns).max()) if attention.numel() else 0, 2)


def _to_device(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Several int64 CPU vectors -> the same on `device` in ONE host-to-device copy (pinned, non-blocking)."""
    sizes = [int(p.numel()) for p in parts]
    flat = torch.cat(parts)
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    return list(flat.split(sizes))


def packed_micro_batch(
    cpu: TokenBatch,
    on_device: TokenBatch,
    rows: list[int],
    *,
    varlen: bool,
    device: torch.device,
    host_bounds: bool = False,
) -> MicroBatch:
    """`rows` of the batch (CPU copy for indices, device copy for data) as one packed sequence row. host_bounds:
    also pass the sequence starts on the CPU (SEQUENCE_BOUNDS), for per-sequence attention."""
    if not rows:
        return _padding_micro_batch(cpu, packed=True, varlen=varlen, device=device)
    index = torch.tensor(rows, dtype=torch.long)
    attention = cpu.attention_mask.index_select(0, index).bool()  # (n, T)
    width = _width(attention)
    attention = attention[:, :width]
    completion = cpu.completion_mask.index_select(0, index)[:, :width]
    lengths = attention.sum(1)
    total = int(lengths.sum())
    # packed position of every attended (row, column), row-major: each row's tokens stay consecutive
    packed_at = torch.full(attention.shape, -1, dtype=torch.long)
    packed_at[attention] = torch.arange(total)
    full_width = cpu.input_ids.shape[1]
    token_index = (index[:, None] * full_width + torch.arange(width)[None, :])[attention]  # into input_ids.view(-1)
    positions = (torch.cumsum(attention, dim=1) - 1)[attention]
    scored = _scored(attention, completion)
    scatter_rows, scatter_cols = scored.nonzero(as_tuple=True)
    score_index = packed_at[scored] - 1  # the hidden state of the token before predicts this one
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    parts = _to_device(
        [index, token_index, positions, score_index, scatter_rows, scatter_cols, cu_seqlens], device
    )
    rows_d, token_index_d, positions_d, score_d, srows_d, scols_d, cu_d = parts
    input_ids = on_device.input_ids.reshape(-1).index_select(0, token_index_d)[None, :]
    kwargs: dict[str, Any] = {}
    if varlen:
        longest = int(lengths.max())
        cu32 = cu_d.to(torch.int32)
        kwargs = {"cu_seq_lens_q": cu32, "cu_seq_lens_k": cu32, "max_length_q": longest, "max_length_k": longest}
        if host_bounds:
            kwargs[SEQUENCE_BOUNDS] = cu_seqlens  # the CPU copy: read without a device sync
    return MicroBatch(
        rows=rows_d,
        input_ids=input_ids,
        position_ids=positions_d[None, :],
        attention_mask=None,
        attention_kwargs=kwargs,
        score_index=score_d,
        scatter_rows=srows_d,
        scatter_cols=scols_d,
        batch=_fields(on_device, rows_d, width),
        tokens=total,
    )


def padded_micro_batch(cpu: TokenBatch, on_device: TokenBatch, rows: list[int], *, device: torch.device) -> MicroBatch:
    """`rows` as a (n, width) block of right-padded rows (legacy `micro_batch_size` mode)."""
    if not rows:
        return _padding_micro_batch(cpu, packed=False, varlen=False, device=device)
    index = torch.tensor(rows, dtype=torch.long)
    attention = cpu.attention_mask.index_select(0, index).bool()
    width = _width(attention)
    attention = attention[:, :width]
    completion = cpu.completion_mask.index_select(0, index)[:, :width]
    # with causal attention a real token never sees the pads to its right: no mask needed for right-padded rows
    right_padded = torch.equal(attention, torch.arange(width)[None, :] < attention.sum(1, keepdim=True))
    scored = completion.bool() & attention & (torch.arange(width)[None, :] >= 1)
    scatter_rows, scatter_cols = scored.nonzero(as_tuple=True)
    score_index = scatter_rows * width + scatter_cols - 1
    rows_d, score_d, srows_d, scols_d = _to_device([index, score_index, scatter_rows, scatter_cols], device)
    batch = _fields(on_device, rows_d, width)
    return MicroBatch(
        rows=rows_d,
        input_ids=batch.input_ids,
        position_ids=None,
        attention_mask=None if right_padded else batch.attention_mask,
        attention_kwargs={},
        score_index=score_d,
        scatter_rows=srows_d,
        scatter_cols=scols_d,
        batch=batch,
        tokens=int(attention.sum()),
    )


def _padding_micro_batch(cpu: TokenBatch, *, packed: bool, varlen: bool, device: torch.device) -> MicroBatch:
    """A micro-batch for a rank with fewer rows than micro-batches: `padding_fields`, writing nothing back."""
    fields = padding_fields(cpu)
    on_device = map_fields(fields, lambda v: v.to(device))
    if packed:
        micro = packed_micro_batch(fields, on_device, [0], varlen=varlen, device=device)
    else:
        micro = padded_micro_batch(fields, on_device, [0], device=device)
    micro.rows = micro.rows[:0]
    micro.tokens = 0
    return micro
