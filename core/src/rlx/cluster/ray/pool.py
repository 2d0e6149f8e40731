"""The actor pool every Ray component is built on: start actors, fan a call out, gather the answers with a deadline
(naming the actor that raised, died or hung, root cause first), and close (ask, then kill)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from rlx.cluster.base import row_counts
from rlx.errors import RlxError

POLL_S = 1.0
"""How often a wait wakes up to check its deadline."""

ROOT_CAUSE_GRACE_S = 1.0
"""After a first failure, how long to wait for the other calls to settle so that the message can put a dead actor
(the cause) before the peers whose collective it broke (the consequence)."""


class RayWorkerError(RlxError):
    """A Ray actor raised, died or timed out; the message names it, the call and the step."""


@dataclass
class StepClock:
    """Which GRPO step the run is at, for messages and logs; shared by the pools of one run.

    `version` is that of the last completed weight push: the trainer step the weights come from, so the step under
    way is `version + 1` (also on a resumed run, whose first push carries the checkpoint's step).
    """

    version: int | None = None
    pushes: int = 0

    def pushed(self, version: int | None) -> None:
        self.pushes += 1
        self.version = version

    def where(self) -> str:
        if self.version is not None:
            return f"at step {self.version + 1}"
        if self.pushes == 0:
            return "before the first weight push"
        return f"after weight push {self.pushes} of this process (pushed without a version)"


Pending = tuple[Any, str]
"""An object ref of a remote call and the label of the actor running it."""


def node_info() -> dict[str, Any]:
    """Where the calling actor runs (its `node` method returns this): node, process and the GPUs Ray gave it."""
    return {
        "ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
    }


def _describe(exc: BaseException) -> tuple[bool, str]:
    """(whether the actor died, what happened)."""
    if isinstance(exc, ray.exceptions.RayActorError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        return True, f"died ({type(exc).__name__}: {first})"
    if isinstance(exc, ray.exceptions.RayTaskError):
        return False, f"raised:\n{exc}"
    return False, f"failed: {type(exc).__name__}: {exc}"


class ActorPool:
    """Actors of one kind (trainer ranks, generator replicas or scorers), each with a label for messages.

    A failed gather raises `error` and, with `breaks=True` (the default), leaves the pool broken: later calls fail at
    once, naming the first failure, and closing kills instead of asking. `kill_on_failure` kills every actor at
    the first failure (trainer ranks: the others may wait in a collective forever).
    """

    def __init__(
        self,
        actor_cls: type,
        args: Sequence[tuple[Any, ...]],
        options: Sequence[dict[str, Any]],
        *,
        labels: Sequence[str],
        timeout_s: float,
        clock: StepClock,
        error: type[RlxError] = RayWorkerError,
        kill_on_failure: bool = False,
    ) -> None:
        self.labels = list(labels)
        self.timeout_s = timeout_s
        self.clock = clock
        self.error = error
        self.kill_on_failure = kill_on_failure
        self.broken: str | None = None
        self._closed = False
        remote = ray.remote(actor_cls)
        self.actors = [remote.options(**opts).remote(*a) for a, opts in zip(args, options, strict=True)]
        try:
            self.infos: list[dict[str, Any]] = self.call_all("node")
        except BaseException:  # a failed or interrupted start leaves no actor behind
            self.kill()
            raise

    @property
    def nodes(self) -> list[str]:
        """The Ray node id of each actor."""
        return [info["node_id"] for info in self.infos]

    def __len__(self) -> int:
        return len(self.actors)

    # ------------------------------------------------------------------------------------------------ calls

    def check_usable(self) -> None:
        if self.broken is not None:
            raise self.error(f"this pool failed earlier and cannot be used: {self.broken}")

    def fan_out(
        self,
        call: str,
        args: Sequence[tuple[Any, ...]] | None = None,
        *,
        only: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> list[Pending]:
        """Start `call` on the actors `only` (default all), actor i with `args[i]`, all with `kwargs`."""
        self.check_usable()
        indices = range(len(self.actors)) if only is None else only
        return [
            (getattr(self.actors[i], call).remote(*(args[i] if args is not None else ()), **kwargs), self.labels[i])
            for i in indices
        ]

    def call_all(self, call: str, args: Sequence[tuple[Any, ...]] | None = None, **kwargs: Any) -> list[Any]:
        """`call` on every actor; the answers in actor order."""
        return self.gather(self.fan_out(call, args, **kwargs), call)

    def call_blocks(self, call: str, rows: int, block_args: Callable[[int, slice], tuple[Any, ...]]) -> list[Any]:
        """Split `rows` into contiguous blocks, one per actor (`row_counts`: the first ones take one more; actors
        with an empty block are not called), run `call(*block_args(actor, block))` and concatenate the answers."""
        indices, args, start = [], {}, 0
        for index, count in enumerate(row_counts(rows, len(self.actors))):
            if count:
                indices.append(index)
                args[index] = block_args(index, slice(start, start + count))
            start += count
        parts = self.gather(self.fan_out(call, [args.get(i, ()) for i in range(len(self.actors))], only=indices), call)
        return [item for part in parts for item in part]

    def gather(
        self,
        pending: Sequence[Pending],
        call: str,
        *,
        watch: Sequence[Pending] = (),
        deadline: float | None = None,
        breaks: bool = True,
    ) -> list[Any]:
        """The answers of `pending`, in order. The first failure among `pending` or `watch` (calls running alongside,
        such as peers in the same collective) raises `self.error` naming the actor, the call and the step; so does
        `deadline` (time.monotonic(); default: `timeout_s` from now)."""
        self.check_usable()
        deadline = time.monotonic() + self.timeout_s if deadline is None else deadline
        waiting = {ref: i for i, (ref, _) in enumerate(pending)}
        watching = dict(watch)
        results: list[Any] = [None] * len(pending)
        try:
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    late = ", ".join(pending[i][1] for i in sorted(waiting.values()))
                    raise self.error(
                        f"{late}: '{call}' {self.clock.where()} did not finish within "
                        f"cluster.timeout_s={self.timeout_s:g} s (a hung worker or collective)"
                    )
                ready, _ = ray.wait([*waiting, *watching], num_returns=1, timeout=min(left, POLL_S), fetch_local=False)
                for ref in ready:
                    index = waiting.pop(ref, None)
                    label = pending[index][1] if index is not None else watching.pop(ref)
                    try:
                        value = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - any failure of an actor we depend on ends the call
                        others = [p for p in [*pending, *watch] if p[0] in waiting or p[0] in watching]
                        raise self.error(self._diagnose(call, (ref, label), exc, others)) from None
                    if index is not None:
                        results[index] = value
        except RlxError as exc:
            if breaks:
                self.broken = str(exc)
                if self.kill_on_failure:
                    self.kill()
            raise
        return results

    def _diagnose(self, call: str, first: Pending, exc: BaseException, others: Sequence[Pending]) -> str:
        """Every failure among `first` and the calls that fail within the grace, dead actors first."""
        failures = [(first[1], exc)]
        if others:
            ready, _ = ray.wait([ref for ref, _ in others], num_returns=len(others), timeout=ROOT_CAUSE_GRACE_S)
            labels = dict(others)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as other:  # noqa: BLE001
                    failures.append((labels[ref], other))
        described = [(label, *_describe(failure)) for label, failure in failures]
        described.sort(key=lambda item: not item[1])  # stable: dead actors first, then by arrival
        where = self.clock.where()
        return "\n".join(f"{label} {what} during '{call}' {where}" for label, _, what in described)

    # ------------------------------------------------------------------------------------------------ closing

    def kill(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass

    def close(self, grace_s: float) -> None:
        """Ask every actor to close (frees engines and process groups) for at most `grace_s`, then kill them all;
        a broken pool is killed at once. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.broken is None:
                refs = [actor.close.remote() for actor in self.actors]
                ray.wait(refs, num_returns=len(refs), timeout=grace_s)
        except Exception:  # noqa: BLE001 - closing must not hide the run's own error
            pass
        finally:
            self.kill()


class PoolBacked:
    """What the Ray components share: the pool they run on (`pool`), where its actors run, its deadline, closing."""

    pool: ActorPool
    close_grace_s = 60.0  # the longest closing waits for the actors before killing them

    @property
    def actors(self) -> list[Any]:
        return self.pool.actors

    @property
    def nodes(self) -> list[str]:
        """The Ray node id of each actor."""
        return self.pool.nodes

    def placement(self) -> list[str]:
        """Where each actor runs, for logs: 'trainer rank 0 on 10.0.0.5 (GPU 0)'."""
        return [
            f"{label} on {info['ip']}" + (f" (GPU {','.join(info['gpu_ids'])})" if info["gpu_ids"] else "")
            for label, info in zip(self.pool.labels, self.pool.infos, strict=True)
        ]

    @property
    def timeout_s(self) -> float:
        """The deadline of every later call (`cluster.timeout_s`)."""
        return self.pool.timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        self.pool.timeout_s = seconds

    def close(self) -> None:
        """Close every actor (bounded wait), then kill them; safe after a failure and twice."""
        self.pool.close(min(self.pool.timeout_s, self.close_grace_s))
