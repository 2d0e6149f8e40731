"""State every generator keeps the same way: which memory `sleep()` released (and the order to bring it back),
which policy version it serves, and whether its last weight push completed; and the sleep to use when a full weight
push follows (`sleep_before_weight_push`)."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from rlx.errors import WeightPushIncompleteError, WeightPushTimeoutError
from rlx.interfaces import Completion, Generator, NamedTensors

TagCall = Callable[[list[str]], object]


class ReleasedMemory:
    """The memory tags an engine's `sleep()` released, and how they come back: weights (and what the engine groups
    with them, e.g. CUDA graphs) first, then the KV cache, which is sized to the memory left once weights are back.

    `release` and `resume_*` take the engine call to make (given the tags, in order) and only ever pass tags in
    the right state: engines fail on resuming a tag that was not released.
    """

    def __init__(self, weight_tags: Sequence[str], kv_cache_tags: Sequence[str]) -> None:
        self.weight_tags = tuple(weight_tags)
        self.kv_cache_tags = tuple(kv_cache_tags)
        self.released: set[str] = set()

    def release(self, call: TagCall, *, keep: Collection[str] = ()) -> list[str]:
        """Release every tag not yet released (KV cache first) except those in `keep`; returns what was released."""
        tags = [t for t in (*self.kv_cache_tags, *self.weight_tags) if t not in self.released and t not in keep]
        if tags:
            call(tags)
            self.released.update(tags)
        return tags

    def resume_weights(self, call: TagCall) -> None:
        self._resume(self.weight_tags, call)

    def resume_kv_cache(self, call: TagCall) -> None:
        self._resume(self.kv_cache_tags, call)

    def resume_all(self, call: TagCall) -> None:
        """Weights first, then the KV cache (two calls)."""
        self.resume_weights(call)
        self.resume_kv_cache(call)

    @property
    def weights_released(self) -> bool:
        return any(tag in self.released for tag in self.weight_tags)

    def _resume(self, group: Sequence[str], call: TagCall) -> None:
        tags = [tag for tag in group if tag in self.released]
        if tags:
            call(tags)
            self.released.difference_update(tags)


class WeightPushGuard:
    """The policy version a generator serves, and a refusal to serve after a weight push that did not complete.

    A push that stops part-way (an error, or an NCCL collective aborted at its deadline, which returns without
    raising: the cluster layer must then make the weight iterator raise) can leave a mix of old and new weights,
    and sampling from those is worse than failing. So a push is marked incomplete when it starts and complete
    only when it returns; every generate/submit/collect calls `check()` first.
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self.version: int | None = None
        self._incomplete: tuple[int | None, str] | None = None  # (version, what happened)

    @contextmanager
    def push(self, version: int | None) -> Iterator[None]:
        """Wrap one whole weight push (every bucket, and whatever the engine does to finish it)."""
        self._incomplete = (version, "it was still running")
        try:
            yield
        except BaseException as exc:
            self._incomplete = (version, f"{type(exc).__name__}: {exc}")
            raise
        self._incomplete = None
        self.version = version

    @property
    def complete(self) -> bool:
        return self._incomplete is None

    def check(self) -> None:
        """Raise WeightPushIncompleteError while the last push is incomplete."""
        if self._incomplete is not None:
            version, what = self._incomplete
            name = "an unversioned weight push" if version is None else f"the weight push of version {version}"
            raise WeightPushIncompleteError(
                f"{self.component} refuses to serve: {name} did not complete ({what}), so its weights may be a mix "
                "of old and new. Push the weights again with update_weights(); serving resumes once a push completes."
            )


def stamp_version(results: list[list[Completion]], version: int | None) -> list[list[Completion]]:
    """Set `policy_version` on completions that do not report one (engines that cannot tell versions apart)."""
    if version is None:
        return results
    return [[c if c.policy_version is not None else replace(c, policy_version=version) for c in group]
            for group in results]  # fmt: skip


def takes_version(update_weights: Callable[..., object]) -> bool:
    """Whether an `update_weights` accepts `version=` (plugins written before it existed take only `weights`)."""
    try:
        parameters = inspect.signature(update_weights).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature: assume the old one
        return False
    return any(p.name == "version" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def can_drop_weights_on_sleep(generator: Generator) -> bool:
    """Whether `generator` declares `can_drop_weights_on_sleep` (see `Generator.sleep`); False where it has none."""
    return getattr(generator, "can_drop_weights_on_sleep", False) is True  # a mock's made-up attribute is not True


def sleep_as_asked(generator: Generator, drop_weights: bool) -> None:
    """`generator.sleep(drop_weights=True)` where that is asked for and the generator can, else a plain
    `generator.sleep()`, so plugins without the capability work unchanged (what a wrapper's `sleep` forwards)."""
    if drop_weights and can_drop_weights_on_sleep(generator):
        generator.sleep(drop_weights=True)  # type: ignore[call-arg]  # the optional capability, not in the Protocol
    else:
        generator.sleep()


def sleep_before_weight_push(generator: Generator) -> None:
    """Sleep when a complete weight push follows before the next generation: the generator may discard its weights
    instead of keeping them (they are overwritten anyway)."""
    sleep_as_asked(generator, drop_weights=True)


def push_weights(generator: Generator, weights: NamedTensors, version: int | None) -> None:
    """`generator.update_weights(weights, version=version)`, or without `version` where the plugin predates it."""
    if takes_version(generator.update_weights):
        generator.update_weights(weights, version=version)
    else:
        generator.update_weights(weights)


def push_weights_within(generator: Generator, weights: NamedTensors, version: int | None, *, timeout_s: float,
                        component: str = "the generator") -> None:
    """`push_weights`, but a push that has not returned after `timeout_s` is a WeightPushTimeoutError naming the
    version and the side that was stuck (the trainer's weight stream, or the generator taking them) instead of a
    hang. The push runs in a helper thread that is abandoned on timeout; the generator's WeightPushGuard then
    refuses to serve until a later push completes."""
    read = {"tensors": 0, "last": None, "ended": False}

    def counted() -> Iterator:
        for name, tensor in weights:
            read["tensors"], read["last"] = read["tensors"] + 1, name
            yield name, tensor
        read["ended"] = True

    done = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            push_weights(generator, counted(), version)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name=f"rlx-weight-push-{version}", daemon=True).start()
    if not done.wait(timeout_s):
        side = (f"{component} had taken every tensor but not returned" if read["ended"] else
                f"the trainer's weight stream stopped after {read['tensors']} tensor(s)"
                + (f" (the last one '{read['last']}')" if read["last"] else "") + f", or {component} stopped taking them")
        name = "the unversioned weight push" if version is None else f"the weight push of version {version}"
        raise WeightPushTimeoutError(f"{name} did not finish within cluster.timeout_s={timeout_s:g}s: {side}. "
                                     "Raise cluster.timeout_s if pushes are that slow, or look at the generator's logs")
    if failure:
        raise failure[0]
