"""One generator replica as a Ray actor, and its side of a weight push: buckets arrive by remote calls and feed ONE
streamed `update_weights` (the generator's contract); a replica whose push began but did not complete refuses to
serve until a later push completes (it may hold a mix of old and new weights)."""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from rlx.cluster.broadcast import BroadcastSpec, BucketLayout, WeightBroadcast
from rlx.cluster.ray.pool import node_info
from rlx.generation import WeightPushGuard, can_drop_weights_on_sleep, sleep_as_asked, takes_version
from rlx.interfaces import Completion, Generator, NamedTensors, SamplingParams
from rlx.plan import Choice
from rlx.registry import BuildContext

Bucket = list[tuple[str, torch.Tensor]]


class PushAborted(RuntimeError):
    """Raised inside a generator's `update_weights` when its push is abandoned (a later push replaces it)."""


class StreamingUpdate:
    """Runs one `update_weights(iterator)` in a thread, fed bucket by bucket (`put`), ended by `finish` (or
    `abort`: the iterator then raises PushAborted inside update_weights)."""

    _END, _ABORT = object(), object()

    def __init__(self, update_weights: Callable[[NamedTensors], None]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)  # at most two buckets held besides the one loading
        self._error: BaseException | None = None
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(update_weights,), daemon=True)
        self._thread.start()

    def _items(self) -> Iterator[tuple[str, torch.Tensor]]:
        while (bucket := self._queue.get()) is not self._END:
            if bucket is self._ABORT:
                raise PushAborted("the weight push was abandoned before its end")
            yield from bucket

    def _run(self, update_weights: Callable[[NamedTensors], None]) -> None:
        try:
            update_weights(self._items())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the actor's next call
            self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"update_weights failed: {self._error!r}") from self._error

    def put(self, bucket: Bucket | object) -> None:
        while True:
            self._check()
            if not self._thread.is_alive():
                raise RuntimeError("update_weights returned before the push ended (it must consume every tensor)")
            try:
                self._queue.put(bucket, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> float:
        """End the stream, wait for update_weights to return; its duration in seconds."""
        self.put(self._END)
        self._thread.join()
        self._check()
        return time.perf_counter() - self._t0

    def abort(self, wait_s: float = 60.0) -> None:
        """Make update_weights stop (PushAborted from its iterator) and wait for it to return."""
        while True:  # drop what it has not read: nobody will finish this push
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(self._ABORT)
        self._thread.join(wait_s)
        if self._thread.is_alive():
            raise RuntimeError(f"an abandoned update_weights did not return within {wait_s:g} s")


class ReplicaWeights:
    """A replica's weight pushes: `begin(version)`, `load(bucket)` per bucket, `end()`, spread over remote calls.

    A `WeightPushGuard` (`rlx.generation`) spans each push from `begin` to `end`, so the replica refuses to serve
    (`check_serving`) from the moment a push begins until one completes, whatever its generator does itself.
    `version` reaches the generator's `update_weights` only where its signature takes it.
    """

    def __init__(self, generator: Generator, label: str) -> None:
        self.guard = WeightPushGuard(label)
        self._update_weights = generator.update_weights
        self.forwards_version = takes_version(generator.update_weights)
        self._update: StreamingUpdate | None = None
        self._scope: contextlib.ExitStack | None = None  # holds the guard's push open across remote calls

    @property
    def version(self) -> int | None:
        """The version of the last completed push (None: the weights it was built with, or pushed without one)."""
        return self.guard.version

    def begin(self, version: int | None) -> None:
        if self._update is not None:  # the previous push never ended: this one replaces it
            update, scope = self._update, self._scope
            self._update = self._scope = None
            with contextlib.suppress(PushAborted), scope:  # type: ignore[union-attr]
                update.abort()
                raise PushAborted("a later push replaced it before it ended")
        self._scope = contextlib.ExitStack()
        self._scope.enter_context(self.guard.push(version))
        update_weights = self._update_weights
        if self.forwards_version:
            update_weights = functools.partial(update_weights, version=version)
        self._update = StreamingUpdate(update_weights)

    def _current(self) -> StreamingUpdate:
        if self._update is None:
            raise RuntimeError(f"{self.guard.component}: a weight bucket arrived outside a push (begin_update first)")
        return self._update

    def load(self, bucket: Bucket) -> None:
        self._current().put(bucket)

    def end(self) -> float:
        """Seconds update_weights took, begin to end; only now does the replica serve the new version."""
        update, scope = self._current(), self._scope
        self._update = self._scope = None
        with scope:  # type: ignore[union-attr]  # the guard marks the push complete, or failed if finish raises
            return update.finish()

    def check_serving(self) -> None:
        """Raise WeightPushIncompleteError while the last push is incomplete."""
        self.guard.check()


class GeneratorActor:
    """One generator replica: the chosen generator plugin, built on the actor's node."""

    def __init__(self, choice: Choice, ctx: BuildContext, label: str) -> None:
        self.generator: Generator = choice.build(ctx)
        self.weights = ReplicaWeights(self.generator, label)
        self._broadcast: WeightBroadcast | None = None

    def node(self) -> dict[str, Any]:
        return node_info()

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        self.weights.check_serving()
        return self.generator.generate(prompts, params)

    def begin_update(self, version: int | None) -> None:
        self.weights.begin(version)

    def load_bucket(self, bucket: Bucket) -> None:
        self.weights.load(bucket)

    def end_update(self) -> float:
        return self.weights.end()

    def join_weight_broadcast(self, spec: BroadcastSpec, rank: int) -> None:
        self._broadcast = None  # a group made again replaces the old one (unusable after a failed push)
        self._broadcast = WeightBroadcast(spec, rank)

    def receive_broadcast_bucket(self, layout: BucketLayout) -> None:
        if self._broadcast is None:
            raise RuntimeError(f"{self.weights.label}: join_weight_broadcast first")
        self.weights.load(self._broadcast.receive(layout))

    def can_drop_weights_on_sleep(self) -> bool:
        return can_drop_weights_on_sleep(self.generator)

    def sleep(self, drop_weights: bool = False) -> None:
        sleep_as_asked(self.generator, drop_weights)  # a plain sleep where the plugin cannot drop its weights

    def wake_up(self) -> None:
        self.generator.wake_up()

    def close(self) -> None:
        self._broadcast = None
        self.generator.close()
