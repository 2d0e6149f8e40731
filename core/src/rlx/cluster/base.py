"""What every trainer-group backend shares: the per-rank `TrainerWorker` and splitting batches by rank
(`shard_rows`: token-balanced, with `RowShards.restore` to put per-row results back in order).

`local` (processes on one host) and `ray` (actors) both host one `TrainerWorker` per rank and fan the
Trainer calls out to them; the worker itself knows nothing about how it is hosted.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from rlx.errors import RlxError
from rlx.interfaces import PolicyLossFn, TokenBatch, TrainBatch, Trainer
from rlx.packing import inverse_permutation, karmarkar_karp
from rlx.plan import Choice
from rlx.registry import BuildContext


class TrainerWorkerError(RlxError):
    """A trainer rank raised or died; the message names the rank and the call."""


def free_port() -> int:
    """A TCP port free right now on this host (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def row_counts(rows: int, parts: int) -> list[int]:
    """Contiguous split sizes: the first `rows % parts` parts get one row more."""
    return [rows // parts + (1 if part < rows % parts else 0) for part in range(parts)]


def take_rows(batch: TokenBatch, rows: Sequence[int]) -> TokenBatch:
    """The same batch type with only `rows` (in that order) of every (B, ...) tensor field."""
    index = torch.tensor(list(rows), dtype=torch.long)
    values = {
        f.name: (v.index_select(0, index) if isinstance(v := getattr(batch, f.name), torch.Tensor) else v)
        for f in dataclasses.fields(batch)
    }
    return type(batch)(**values)


@dataclass(frozen=True)
class RowShards:
    """A batch split across ranks by rows, and the way back: `restore` puts per-row results in the original order.

    shards[k] holds the rows `rows[k]` of the original batch (ascending).
    """

    shards: list[TokenBatch]
    rows: list[list[int]]

    def restore(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-shard results (len(rows[k]), ...) -> (B, ...) in the original row order."""
        order = [row for rows in self.rows for row in rows]
        return torch.cat(list(parts), dim=0)[inverse_permutation(order)]


def shard_rows(batch: TokenBatch, parts: int) -> RowShards:
    """Split `batch` into `parts` shards of near-equal token count (Karmarkar-Karp on each row's attended tokens),
    so every rank has the same work; some shards are empty when there are fewer rows than parts.

    The GRPO update does not depend on the split (loss_weights carry the global normalisation); log-probabilities
    must come back through `RowShards.restore`.
    """
    lengths = batch.attention_mask.sum(-1).tolist()
    rows = karmarkar_karp(lengths, parts)
    return RowShards(shards=[take_rows(batch, part) for part in rows], rows=rows)


class TrainerWorker:
    """One trainer rank: a plain object whose methods are the Trainer calls (plus `start`).

    Hosts call `start(rank, world_size, master_addr, master_port)` once (it sets the torch.distributed
    environment, initialises the process group and builds the trainer component), then
    any Trainer method with this rank's shard of the batch. Results are CPU tensors, so they can cross
    process boundaries (pipes, Ray's object store).
    """

    def __init__(self, choice: Choice, ctx: BuildContext) -> None:
        self.choice = choice
        self.ctx = ctx
        self.rank = 0
        self.trainer: Trainer | None = None

    def start(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        import torch.distributed as dist

        self.rank = rank
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size),
        )
        if torch.cuda.is_available():
            torch.cuda.set_device(rank % torch.cuda.device_count())
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
        self.trainer = self.choice.build(self.ctx)

    def _trainer(self) -> Trainer:
        if self.trainer is None:
            raise RuntimeError("TrainerWorker.start() was not called")
        return self.trainer

    def logprobs(self, batch: TokenBatch, temperature: float = 1.0, reference: bool = False) -> torch.Tensor:
        return self._trainer().logprobs(batch, temperature=temperature, reference=reference).cpu()

    def train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, temperature: float = 1.0) -> dict[str, float]:
        return self._trainer().train_step(batch, loss_fn, temperature=temperature)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every rank must run this to the end (the gathers are collective); rank 0's items are the data
        (copied to CPU to cross the process boundary; the other ranks' are left where they are)."""
        for name, tensor in self._trainer().named_weights():
            yield name, (tensor.detach().cpu() if self.rank == 0 else tensor)

    def save_checkpoint(self, path: str) -> None:
        self._trainer().save_checkpoint(path)

    def load_checkpoint(self, path: str) -> None:
        self._trainer().load_checkpoint(path)

    def export_hf(self, path: str) -> None:
        self._trainer().export_hf(path)

    def close(self) -> None:
        import torch.distributed as dist

        if self.trainer is not None:
            self.trainer.close()
            self.trainer = None
        if dist.is_initialized():
            dist.destroy_process_group()
