"""Trainer ranks on this host: `LocalTrainerGroup` is ONE Trainer to the GRPO loop, backed by one
in-process trainer (world_size=1) or by world_size spawned processes, one torch.distributed rank each.

Each process hosts a `rlx.cluster.base.TrainerWorker` (a plain object whose methods are the Trainer
calls) and serves calls from a command queue. The driver splits batches by rows (`shard_rows`: equal token
loads), sends each rank its shard, and gathers the answers while watching every process: a rank that raises or dies
surfaces at once as a `TrainerWorkerError` naming the rank and the call (the other ranks, perhaps stuck
in a collective, are terminated). A Ray group reuses the same worker: `ray.remote(TrainerWorker)` actors,
`start(rank, world_size, rank0_ip, port)` on each, and the same fan-out / row split (`shard_rows`, `restore`).
"""

from __future__ import annotations

import queue
import time
import traceback
from collections.abc import Iterator
from typing import Any

import torch
import torch.multiprocessing as mp

from rlx.cluster.base import TrainerWorker, TrainerWorkerError, free_port, shard_rows
from rlx.interfaces import PolicyLossFn, TokenBatch, TrainBatch, Trainer
from rlx.plan import Choice
from rlx.registry import BuildContext

# messages worker -> driver: (rank, kind, call, payload); kind is "ok" | "error" | "item"
_OK, _ERROR, _ITEM = "ok", "error", "item"
# named_weights flow control, driver -> rank 0: one tensor in flight at a time
_NEXT, _STOP = "next", "stop"


def _serve(
    rank: int,
    world_size: int,
    master_port: int,
    worker: TrainerWorker,
    commands: Any,
    results: Any,
) -> None:
    """A worker process: start the rank, then run calls from `commands` until "close"."""
    call = "start"
    try:
        worker.start(rank, world_size, "127.0.0.1", master_port)
        results.put((rank, _OK, call, None))
        while True:
            call, args, kwargs = commands.get()
            if call == "named_weights":
                sending = rank == 0
                for item in worker.named_weights():
                    if sending:
                        results.put((rank, _ITEM, call, item))
                        # keep going without sending when the driver stops early: the gathers are collective
                        sending = commands.get() == _NEXT
                results.put((rank, _OK, call, None))
                continue
            out = getattr(worker, call)(*args, **kwargs)
            results.put((rank, _OK, call, out))
            if call == "close":
                return
    except BaseException:  # noqa: BLE001 - everything must reach the driver, as text (may not pickle)
        results.put((rank, _ERROR, call, traceback.format_exc()))


class LocalTrainerGroup:
    """A `Trainer` made of `world_size` ranks on this host (see the module docstring).

    `choice` is the trainer component and its config; every rank builds it with `ctx`. A call that takes
    longer than `timeout_s` (`cluster.timeout_s`) fails the group.
    """

    def __init__(
        self,
        choice: Choice,
        ctx: BuildContext,
        *,
        world_size: int = 1,
        timeout_s: float = 1800.0,
        poll_s: float = 0.5,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._broken: str | None = None
        self._trainer: Trainer | None = None
        self._procs: list[Any] = []
        if world_size == 1:
            self._trainer = choice.build(ctx)
            return
        spawn = mp.get_context("spawn")
        self._results = spawn.Queue()
        self._commands = [spawn.Queue() for _ in range(world_size)]
        port = free_port()
        for rank in range(world_size):
            worker = TrainerWorker(choice, ctx)
            proc = spawn.Process(
                target=_serve,
                args=(rank, world_size, port, worker, self._commands[rank], self._results),
                name=f"rlx-trainer-rank{rank}",
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
        self._gather("start")

    # ---------------------------------------------------------------------------------------- plumbing

    def _fail(self, message: str) -> TrainerWorkerError:
        """Stop every rank (some may wait in a collective forever) and remember why the group is dead."""
        self._broken = message
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        return TrainerWorkerError(message)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise TrainerWorkerError(f"the trainer group failed earlier and cannot be used: {self._broken}")

    def _next_message(self, call: str, deadline: float) -> tuple[int, str, str, Any]:
        """The next worker message; raises on a worker error, a dead worker or the deadline."""
        while True:
            try:
                rank, kind, what, payload = self._results.get(timeout=self.poll_s)
            except queue.Empty:
                if any(not proc.is_alive() for proc in self._procs):
                    raise self._fail(self._diagnose(call, [])) from None
                if time.monotonic() > deadline:
                    raise self._fail(f"trainer call '{call}' took longer than {self.timeout_s:.0f} s") from None
                continue
            if kind == _ERROR:
                raise self._fail(self._diagnose(call, [(rank, what, payload)])) from None
            return rank, kind, what, payload

    def _diagnose(self, call: str, errors: list[tuple[int, str, str]]) -> str:
        """Say what went wrong, root cause first: a rank that died makes its peers' collectives fail
        (gloo: "connection closed by peer"), so give the others a moment to report or exit."""
        grace = time.monotonic() + 2.0
        while time.monotonic() < grace:
            try:
                rank, kind, what, payload = self._results.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == _ERROR:
                errors.append((rank, what, payload))
        # root cause first: a rank that crashed (non-zero exit) or raised; a peer that then left cleanly (exit
        # code 0, its collective broken) is a consequence and comes last
        dead = [(rank, proc.exitcode) for rank, proc in enumerate(self._procs) if not proc.is_alive()]
        crashed = [f"trainer rank {rank} died (exit code {code}) during '{call}'" for rank, code in dead if code != 0]
        raised = [f"trainer rank {rank} raised in '{what}':\n{payload}" for rank, what, payload in errors]
        left = [f"trainer rank {rank} died (exit code {code}) during '{call}'" for rank, code in dead if code == 0]
        return "\n".join(crashed + raised + left)

    def _gather(self, call: str) -> list[Any]:
        """Wait for every rank's answer to `call`; returns them by rank."""
        deadline = time.monotonic() + self.timeout_s
        answers: dict[int, Any] = {}
        while len(answers) < self.world_size:
            rank, kind, _, payload = self._next_message(call, deadline)
            if kind == _OK:
                answers[rank] = payload
        return [answers[rank] for rank in range(self.world_size)]

    def _call_all(self, call: str, per_rank_args: list[tuple[Any, ...]] | None = None, **kwargs: Any) -> list[Any]:
        self._check_usable()
        for rank in range(self.world_size):
            args = per_rank_args[rank] if per_rank_args is not None else ()
            self._commands[rank].put((call, args, kwargs))
        return self._gather(call)

    # ---------------------------------------------------------------------------------------- Trainer

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0, reference: bool = False) -> torch.Tensor:
        """(B, T) float32: each rank scores a token-balanced share of the rows; results come back in row order."""
        if self._trainer is not None:
            return self._trainer.logprobs(batch, temperature=temperature, reference=reference)
        split = shard_rows(batch, self.world_size)
        parts = self._call_all("logprobs", [(s,) for s in split.shards], temperature=temperature, reference=reference)
        return split.restore(parts)

    def train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float = 1.0) -> dict[str, float]:
        """One optimizer step over the whole batch (token-balanced row shards); rank 0's metrics (all-reduced)."""
        if self._trainer is not None:
            return self._trainer.train_step(batch, loss_fn, temperature=temperature)
        shards = shard_rows(batch, self.world_size).shards
        return self._call_all("train_step", [(shard, loss_fn) for shard in shards], temperature=temperature)[0]

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Rank 0's full tensors (CPU), one at a time; every rank takes part in the gathers."""
        if self._trainer is not None:
            yield from self._trainer.named_weights()
            return
        self._check_usable()
        for rank in range(self.world_size):
            self._commands[rank].put(("named_weights", (), {}))
        deadline = time.monotonic() + self.timeout_s
        done: set[int] = set()
        awaiting_ack = False
        try:
            while len(done) < self.world_size:
                rank, kind, _, payload = self._next_message("named_weights", deadline)
                if kind == _ITEM:
                    awaiting_ack = True
                    yield payload
                    awaiting_ack = False
                    self._commands[0].put(_NEXT)
                elif kind == _OK:
                    done.add(rank)
        finally:
            if len(done) < self.world_size and self._broken is None:
                # the consumer stopped early: let the ranks finish their gathers without sending
                if awaiting_ack:
                    self._commands[0].put(_STOP)
                while len(done) < self.world_size:
                    rank, kind, _, _ = self._next_message("named_weights", deadline)
                    if kind == _OK:
                        done.add(rank)

    def save_checkpoint(self, path: str) -> None:
        if self._trainer is not None:
            return self._trainer.save_checkpoint(path)
        self._call_all("save_checkpoint", [(path,)] * self.world_size)

    def load_checkpoint(self, path: str) -> None:
        if self._trainer is not None:
            return self._trainer.load_checkpoint(path)
        self._call_all("load_checkpoint", [(path,)] * self.world_size)

    def export_hf(self, path: str) -> None:
        if self._trainer is not None:
            return self._trainer.export_hf(path)
        self._call_all("export_hf", [(path,)] * self.world_size)

    def close(self) -> None:
        """Close every rank (then reap the processes); safe to call twice or after a failure."""
        if self._trainer is not None:
            self._trainer.close()
            self._trainer = None
            return
        if not self._procs:
            return
        try:
            if self._broken is None:
                self._call_all("close")
        finally:
            for proc in self._procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=10)
            self._procs = []
