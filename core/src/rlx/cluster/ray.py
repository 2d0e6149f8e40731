"""Components on a Ray cluster (the ONLY rlx module that imports ray): trainer ranks, generator replicas and
environment scorers as actors behind plain Trainer / Generator / Environment objects; failures name the worker and
the step within `cluster.timeout_s`, and closing kills every actor. How to run it: docs/ray.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlx.cluster import Components
from rlx.cluster.base import TrainerWorker, TrainerWorkerError, free_port, row_counts, split_rows
from rlx.config import ClusterConfig
from rlx.errors import ConfigError, RlxError
from rlx.interfaces import (
    Completion,
    Environment,
    NamedTensors,
    PolicyLossFn,
    Problem,
    SamplingParams,
    Score,
    Split,
    TokenBatch,
    TrainBatch,
)
from rlx.plan import Choice, Selection
from rlx.registry import BuildContext
from rlx.weights import iter_buckets, tensor_bytes

log = logging.getLogger("rlx.cluster.ray")

DEFAULT_BUCKET_BYTES = 256 << 20
"""Weight-push bucket size: bounds what the object store (or NCCL) holds per bucket in flight (two at most)."""

REPLICA_SEED_STRIDE = 10_007
"""Replica r is built with seed `seed + r * stride` and samples with `params.seed + r * stride` (replica 0: as given)."""

_POLL_S = 1.0  # how often a wait wakes up to check the deadline


class RayWorkerError(RlxError):
    """A generator replica or environment worker raised, died or timed out; the message names it, the call and the step."""


# ------------------------------------------------------------------------------------------------- waiting


@dataclass
class _Progress:
    """Shared by the components of one run: which GRPO step is under way, for error messages.

    The components do not see the loop's counter; they count weight pushes (one per step), so `step` is the
    step of this process's run (on a resumed run, add the checkpoint's step minus one).
    """

    pushes: int = 0

    @property
    def step(self) -> int:
        return self.pushes + 1


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, ray.exceptions.RayActorError):
        return f"died ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})"
    if isinstance(exc, ray.exceptions.RayTaskError):
        return f"raised:\n{exc}"
    return f"failed: {type(exc).__name__}: {exc}"


def wait_all(
    refs: Sequence[ray.ObjectRef],
    labels: Sequence[str],
    *,
    call: str,
    step: int,
    timeout_s: float,
    error: type[RlxError],
    watch: Sequence[tuple[ray.ObjectRef, str]] = (),
    fetch: bool = True,
) -> list[Any]:
    """The results of `refs` in order. The first failure among `refs` or `watch` (calls running alongside, such
    as other ranks in the same collective) raises `error` naming the worker; so does the deadline.

    `fetch=False` waits without pulling the values to this process (returns None for each).
    """
    deadline = time.monotonic() + timeout_s
    pending: dict[ray.ObjectRef, int] = {ref: i for i, ref in enumerate(refs)}
    watching: dict[ray.ObjectRef, str] = dict(watch)
    results: list[Any] = [None] * len(refs)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            late = ", ".join(labels[i] for i in sorted(pending.values()))
            raise error(
                f"{late}: '{call}' at step {step} did not finish within cluster.timeout_s={timeout_s:g} s "
                "(a hung worker or collective; the cluster's actors are stopped)"
            )
        ready, _ = ray.wait([*pending, *watching], num_returns=1, timeout=min(left, _POLL_S), fetch_local=False)
        for ref in ready:
            if ref in watching:
                label = watching.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - any failure of a worker we depend on ends the call
                    raise error(f"{label} {_describe_failure(exc)} during '{call}' at step {step}") from None
                continue
            index = pending.pop(ref)
            try:
                results[index] = ray.get(ref) if fetch else None
            except Exception as exc:  # noqa: BLE001
                raise error(f"{labels[index]} {_describe_failure(exc)} during '{call}' at step {step}") from None
    return results


# ------------------------------------------------------------------------------------------------- placement


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    # Ray rejects empty bundles: a worker asking for nothing still reserves a sliver of CPU
    out = {"CPU": cpus if cpus > 0 else 0.01}
    if gpus > 0:
        out["GPU"] = gpus
    return out


class Placement:
    """The placement groups of one run and the options each actor is created with.

    colocated: one group of max(trainer_workers, generator_replicas) bundles; trainer rank i and generator
    replica i share bundle i (half of its CPUs and GPUs each, so on GPU they share the device and take turns:
    the loop puts the generator to sleep while the trainer trains). separate: one group per pool.
    Environment scorers are plain actors spread over the cluster (scoring is CPU work, outside the groups).
    """

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        bundle = _bundle(cfg.ray.cpus_per_worker, cfg.ray.gpus_per_worker)
        self.groups: list[PlacementGroup] = []
        self.removed = False
        if cfg.ray.placement == "colocated":
            count = max(cfg.trainer_workers, cfg.generator_replicas)
            shared = placement_group([bundle] * count, strategy=cfg.ray.strategy)
            self.groups.append(shared)
            self._trainer_group, self._generator_group, self._share = shared, shared, 0.5
        else:
            self._trainer_group = placement_group([bundle] * cfg.trainer_workers, strategy=cfg.ray.strategy)
            self._generator_group = placement_group([bundle] * cfg.generator_replicas, strategy=cfg.ray.strategy)
            self.groups += [self._trainer_group, self._generator_group]
            self._share = 1.0
        self.bundles = [dict(b) for g in self.groups for b in g.bundle_specs]

    @staticmethod
    def needed_cpus(cfg: ClusterConfig) -> float:
        """Logical CPUs the run reserves (placement groups plus environment scorers)."""
        bundles = (
            max(cfg.trainer_workers, cfg.generator_replicas)
            if cfg.ray.placement == "colocated"
            else cfg.trainer_workers + cfg.generator_replicas
        )
        return bundles * _bundle(cfg.ray.cpus_per_worker, 0)["CPU"] + cfg.generator_replicas * _env_cpus(cfg)

    def check_feasible(self) -> None:
        """Fail at once when the cluster can never hold the groups (instead of waiting for the timeout)."""
        total = ray.cluster_resources()
        need_cpu = sum(b.get("CPU", 0) for b in self.bundles)
        need_gpu = sum(b.get("GPU", 0) for b in self.bundles)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        problems = []
        if need_cpu > total.get("CPU", 0) + 1e-9:
            problems.append(f"{need_cpu:g} CPUs (cluster has {total.get('CPU', 0):g})")
        if need_gpu > total.get("GPU", 0) + 1e-9:
            problems.append(f"{need_gpu:g} GPUs (cluster has {total.get('GPU', 0):g})")
        if self.cfg.ray.strategy == "STRICT_SPREAD":
            widest = max(len(g.bundle_specs) for g in self.groups)
            if widest > nodes:
                problems.append(f"{widest} nodes for STRICT_SPREAD (cluster has {nodes} alive)")
        if problems:
            raise ConfigError(
                "the Ray cluster cannot hold this run's placement: it needs "
                + "; ".join(problems)
                + f". Lower cluster.trainer_workers / generator_replicas / ray.cpus_per_worker / ray.gpus_per_worker, "
                f"or change cluster.ray.strategy (now {self.cfg.ray.strategy}, placement {self.cfg.ray.placement})"
            )

    def wait_ready(self, timeout_s: float) -> None:
        try:
            ray.get([g.ready() for g in self.groups], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RayWorkerError(
                f"placement groups ({self.cfg.ray.strategy}, bundles {self.bundles}) were not granted within "
                f"cluster.timeout_s={timeout_s:g} s; available now: {ray.available_resources()}"
            ) from None

    def _options(self, group: PlacementGroup, index: int) -> dict[str, Any]:
        return {
            "num_cpus": max(self.cfg.ray.cpus_per_worker, 0.01) * self._share,
            "num_gpus": self.cfg.ray.gpus_per_worker * self._share,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index
            ),
        }

    def trainer_options(self, rank: int) -> dict[str, Any]:
        return self._options(self._trainer_group, rank)

    def generator_options(self, replica: int) -> dict[str, Any]:
        return self._options(self._generator_group, replica)

    def environment_options(self) -> dict[str, Any]:
        return {"num_cpus": _env_cpus(self.cfg), "scheduling_strategy": "SPREAD"}

    def remove(self) -> None:
        """Free the reserved resources (once; `groups` keeps the handles for inspection)."""
        if self.removed:
            return
        self.removed = True
        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:  # noqa: BLE001 - already gone (cluster shut down): nothing to free
                pass


def _env_cpus(cfg: ClusterConfig) -> float:
    return min(1.0, max(cfg.ray.cpus_per_worker, 0.01))


def _node() -> dict[str, Any]:
    ctx = ray.get_runtime_context()
    return {"ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(), "pid": os.getpid()}


def _kill(actors: Sequence[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass


def _close_gracefully(actors: Sequence[Any], seconds: float) -> None:
    """Ask each actor to close (frees engines and process groups), then kill whatever is left."""
    try:
        refs = [actor.close.remote() for actor in actors]
        ray.wait(refs, num_returns=len(refs), timeout=seconds)
    except Exception:  # noqa: BLE001 - closing must not hide the run's own error
        pass
    finally:
        _kill(actors)


# ------------------------------------------------------------------------------------------------- NCCL weights


class NcclBroadcastGroup:
    """A NCCL group of trainer rank 0 (rank 0, the root) and the generator replicas (rank 1 + r), made apart from
    the trainer's default torch.distributed group from its own TCPStore, as vLLM's RLHF example and NeMo-RL do.

    GPU only; not exercised by the CPU test-suite (no GPU there).
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        import datetime

        import torch.distributed as dist

        store = dist.TCPStore(
            host, port, world_size, is_master=rank == 0, timeout=datetime.timedelta(seconds=timeout_s)
        )
        self._dist = dist
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.group = dist.ProcessGroupNCCL(dist.PrefixStore("rlx-weights", store), rank, world_size)

    def broadcast(self, tensor: torch.Tensor) -> None:
        opts = self._dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([tensor], opts).wait()
        torch.cuda.current_stream().synchronize()


# ------------------------------------------------------------------------------------------------- actors


class _TrainerActor(TrainerWorker):
    """One trainer rank as a Ray actor: TrainerWorker plus where it runs and pulling weights out bucket by bucket."""

    def node(self) -> dict[str, Any]:
        return {**_node(), "port": free_port()}

    def free_port(self) -> int:
        return free_port()

    def open_weight_stream(self, max_bytes: int, on_device: bool = False) -> None:
        """Rank 0: start iterating the weights (CPU copies, or device tensors for NCCL) in buckets."""
        source = self._trainer().named_weights() if on_device else self.named_weights()
        self._stream: Iterator[list[tuple[str, torch.Tensor]]] | None = iter_buckets(source, max_bytes)
        self._held: list[torch.Tensor] = []

    def next_bucket(self) -> tuple[dict[str, int] | None, list[tuple[str, torch.Tensor]] | None]:
        """Rank 0: (sizes, bucket) of the next bucket, or (None, None) at the end (two returns: the driver
        reads only the small first one; the bucket goes from the object store straight to the replicas)."""
        bucket = next(self._stream, None) if self._stream is not None else None
        if bucket is None:
            self._stream = None
            return None, None
        return {"tensors": len(bucket), "bytes": sum(tensor_bytes(t) for _, t in bucket)}, bucket

    def drain_weights(self) -> int:
        """Ranks > 0: take part in every gather of named_weights, keep nothing."""
        count = 0
        for _ in self._trainer().named_weights():
            count += 1
        return count

    def join_weight_group(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        self._nccl = NcclBroadcastGroup(host, port, 0, world_size, timeout_s)

    def prepare_nccl_bucket(self) -> list[tuple[str, tuple[int, ...], torch.dtype]] | None:
        """Rank 0: gather the next bucket on the device; return what the replicas must allocate."""
        bucket = next(self._stream, None) if self._stream is not None else None
        if bucket is None:
            self._stream, self._held = None, []
            return None
        self._held = [t.contiguous() for _, t in bucket]
        return [(name, tuple(t.shape), t.dtype) for name, t in bucket]

    def send_nccl_bucket(self) -> None:
        for tensor in self._held:
            self._nccl.broadcast(tensor)
        self._held = []


class _StreamingUpdate:
    """Runs one `generator.update_weights(iterator)` in a thread, fed bucket by bucket from remote calls, so the
    generator sees a single streamed update (its contract) however many buckets arrive."""

    _END = object()

    def __init__(self, update_weights: Callable[[NamedTensors], None]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(update_weights,), daemon=True)
        self._thread.start()

    def _items(self) -> Iterator[tuple[str, torch.Tensor]]:
        while (bucket := self._queue.get()) is not self._END:
            yield from bucket

    def _run(self, update_weights: Callable[[NamedTensors], None]) -> None:
        try:
            update_weights(self._items())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the actor's next call
            self._error = exc

    def put(self, item: Any) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"update_weights failed: {self._error!r}") from self._error
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> float:
        self.put(self._END)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"update_weights failed: {self._error!r}") from self._error
        return time.perf_counter() - self._t0


class _GeneratorActor:
    """One generator replica as a Ray actor: the chosen generator plugin, built on the actor's node."""

    def __init__(self, choice: Choice, ctx: BuildContext) -> None:
        self.generator = choice.build(ctx)
        self._update: _StreamingUpdate | None = None
        self._nccl: NcclBroadcastGroup | None = None

    def node(self) -> dict[str, Any]:
        return _node()

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.generator.generate(prompts, params)

    def begin_update(self) -> None:
        self._update = _StreamingUpdate(self.generator.update_weights)

    def load_bucket(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        assert self._update is not None, "begin_update() first"
        self._update.put(bucket)

    def end_update(self) -> float:
        assert self._update is not None, "begin_update() first"
        update, self._update = self._update, None
        return update.finish()

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        self._nccl = NcclBroadcastGroup(host, port, rank, world_size, timeout_s)

    def receive_nccl_bucket(self, meta: list[tuple[str, tuple[int, ...], torch.dtype]]) -> None:
        assert self._nccl is not None and self._update is not None
        bucket = []
        for name, shape, dtype in meta:
            tensor = torch.empty(shape, dtype=dtype, device=self._nccl.device)
            self._nccl.broadcast(tensor)
            bucket.append((name, tensor))
        self._update.put(bucket)

    def sleep(self) -> None:
        self.generator.sleep()

    def wake_up(self) -> None:
        self.generator.wake_up()

    def close(self) -> None:
        self.generator.close()


class _EnvironmentActor:
    """One scorer: the environment component built on a Ray worker (only `score` is used remotely)."""

    def __init__(self, choice: Choice, ctx: BuildContext) -> None:
        self.env: Environment = choice.build(ctx)

    def node(self) -> dict[str, Any]:
        return _node()

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        return self.env.score(problems, completions)

    def close(self) -> None:
        self.env.close()


# ------------------------------------------------------------------------------------------------- trainer


class RayTrainerGroup:
    """A `Trainer` made of `world_size` trainer actors forming one torch.distributed group (gloo on CPU, NCCL on
    GPU), the Ray twin of `rlx.cluster.local.LocalTrainerGroup`: batches split by rows, rank 0's metrics.

    `nodes[rank]` is the Ray node id of each rank. A failure of any rank (raise, death, timeout) kills the
    group and raises TrainerWorkerError naming the rank, the call and the step.
    """

    def __init__(
        self,
        choice: Choice,
        ctx: BuildContext,
        *,
        world_size: int,
        placement: Placement,
        timeout_s: float,
        progress: _Progress | None = None,
    ) -> None:
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.progress = progress or _Progress()
        self._broken: str | None = None
        self._closed = False
        self._stream: RayWeightStream | None = None
        actor_cls = ray.remote(_TrainerActor)
        self.actors = [
            actor_cls.options(**placement.trainer_options(rank)).remote(choice, ctx)
            for rank in range(world_size)
        ]
        self.labels = [f"trainer rank {rank}" for rank in range(world_size)]
        try:
            infos = self._call_all("node")
            self.nodes = [info["node_id"] for info in infos]
            self.ips = [info["ip"] for info in infos]
            # MASTER_ADDR is rank 0's node IP (not localhost): ranks on other nodes must reach it
            master_ip, master_port = infos[0]["ip"], infos[0]["port"]
            log.info("trainer ranks on nodes %s; torch.distributed master %s:%s", self.ips, master_ip, master_port)
            self._call_all("start", [(rank, world_size, master_ip, master_port) for rank in range(world_size)])
        except BaseException:  # a failed or interrupted start leaves no actor behind
            _kill(self.actors)
            raise

    # ---------------------------------------------------------------------------------------- plumbing

    def wait(self, refs: Sequence[Any], ranks: Sequence[int], call: str, **kwargs: Any) -> list[Any]:
        """`wait_all` for trainer calls: any failure breaks the group (kills every rank) and raises."""
        if self._broken is not None:
            raise TrainerWorkerError(f"the trainer group failed earlier and cannot be used: {self._broken}")
        try:
            return wait_all(
                refs,
                [self.labels[r] for r in ranks],
                call=call,
                step=self.progress.step,
                timeout_s=self.timeout_s,
                error=TrainerWorkerError,
                **kwargs,
            )
        except TrainerWorkerError as exc:
            self._broken = str(exc)
            _kill(self.actors)
            raise

    def _call_all(self, call: str, per_rank_args: list[tuple[Any, ...]] | None = None, **kwargs: Any) -> list[Any]:
        self._finish_stream()
        refs = [
            getattr(actor, call).remote(*(per_rank_args[rank] if per_rank_args else ()), **kwargs)
            for rank, actor in enumerate(self.actors)
        ]
        return self.wait(refs, range(self.world_size), call)

    def _finish_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()

    # ---------------------------------------------------------------------------------------- Trainer

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0, reference: bool = False) -> torch.Tensor:
        """(B, T) float32: each rank scores its contiguous block of rows; blocks are concatenated in order."""
        shards = split_rows(batch, self.world_size)
        parts = self._call_all("logprobs", [(s,) for s in shards], temperature=temperature, reference=reference)
        return torch.cat(parts, dim=0)

    def train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float = 1.0) -> dict[str, float]:
        """One optimizer step over the whole batch (split by rows); rank 0's metrics (already all-reduced)."""
        shards = split_rows(batch, self.world_size)
        return self._call_all("train_step", [(s, loss_fn) for s in shards], temperature=temperature)[0]

    def named_weights(self) -> RayWeightStream:
        """Rank 0's full tensors, read once. A `RayGeneratorPool` moves them actor to actor, never through here."""
        self._finish_stream()
        self._stream = RayWeightStream(self)
        return self._stream

    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its shard under `path`: on several nodes it must be a shared filesystem."""
        self._call_all("save_checkpoint", [(path,)] * self.world_size)

    def load_checkpoint(self, path: str) -> None:
        self._call_all("load_checkpoint", [(path,)] * self.world_size)

    def export_hf(self, path: str) -> None:
        self._call_all("export_hf", [(path,)] * self.world_size)

    def close(self) -> None:
        """Close every rank (bounded wait), then kill the actors; safe after a failure and twice."""
        if self._closed:
            return
        self._closed = True
        self._stream = None
        if self._broken is None:
            _close_gracefully(self.actors, min(self.timeout_s, 60.0))
        else:
            _kill(self.actors)


class RayWeightStream(Iterator[tuple[str, torch.Tensor]]):
    """The trainer's current weights, read once, bucket by bucket from rank 0 while every other rank takes part in
    the gathers. A RayGeneratorPool pulls bucket references (`next_bucket`); any other consumer iterates
    (name, CPU tensor) pairs fetched to the driver. Whatever is left unread is drained before the next trainer call.
    """

    def __init__(self, group: RayTrainerGroup) -> None:
        self.group = group
        self._drains: list[tuple[Any, str]] | None = None
        self._done = False
        self._items: Iterator[tuple[str, torch.Tensor]] = iter(())

    def open(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES, *, on_device: bool = False) -> None:
        if self._drains is not None:
            return
        g = self.group
        self._drains = [(actor.drain_weights.remote(), g.labels[r]) for r, actor in enumerate(g.actors) if r]
        g.wait([g.actors[0].open_weight_stream.remote(bucket_bytes, on_device)], [0], "named_weights")

    def next_bucket(self) -> tuple[dict[str, int] | None, Any]:
        """(sizes, object ref of the bucket) or (None, None) at the end."""
        self.open()
        if self._done:
            return None, None
        g = self.group
        meta_ref, bucket_ref = g.actors[0].next_bucket.options(num_returns=2).remote()
        (meta,) = g.wait([meta_ref], [0], "named_weights", watch=self._drains or ())
        if meta is None:
            self._finish()
            return None, None
        return meta, bucket_ref

    def next_nccl_bucket(self) -> list[tuple[str, tuple[int, ...], torch.dtype]] | None:
        g = self.group
        (meta,) = g.wait([g.actors[0].prepare_nccl_bucket.remote()], [0], "named_weights", watch=self._drains or ())
        if meta is None:
            self._finish()
        return meta

    def _finish(self) -> None:
        self._done = True
        drains, self._drains = self._drains or [], []
        self.group.wait(
            [ref for ref, _ in drains], [self.group.labels.index(label) for _, label in drains], "named_weights"
        )
        if self.group._stream is self:
            self.group._stream = None

    def close(self) -> None:
        """Read to the end without fetching (the gathers are collective: every rank must finish them)."""
        if self._drains is None or self._done:
            return
        while self.next_bucket()[0] is not None:
            pass

    def __next__(self) -> tuple[str, torch.Tensor]:
        while True:
            item = next(self._items, None)
            if item is not None:
                return item
            meta, ref = self.next_bucket()
            if meta is None:
                raise StopIteration
            (bucket,) = self.group.wait([ref], [0], "named_weights")
            self._items = iter(bucket)


# ------------------------------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class WeightPush:
    """How the last weight push went: wall time on the driver, bytes and buckets moved, and the path taken."""

    seconds: float
    bytes: int
    buckets: int
    tensors: int
    transport: str
    load_seconds: float = 0.0  # the slowest replica's update_weights, begin to end


def replica_params(params: SamplingParams, replica: int) -> SamplingParams:
    """Replica 0 samples with `params` as given (a 1-replica run equals a local run); replica r's seed is offset."""
    if replica == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + replica * REPLICA_SEED_STRIDE)


class RayGeneratorPool:
    """A `Generator` made of data-parallel replicas of one generator plugin, each a Ray actor.

    `generate` splits the prompts into contiguous blocks (`row_counts`: the first replicas take one more), each
    replica samples its block with its own seed (`replica_params`), and the groups come back in prompt order.
    So samples depend on the number of replicas; with one replica they equal a local run's.
    `update_weights` pushes bucket by bucket and records `last_push` (also logged).
    """

    def __init__(
        self,
        choice: Choice,
        ctx: BuildContext,
        *,
        replicas: int,
        placement: Placement,
        timeout_s: float,
        progress: _Progress | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        self.timeout_s = timeout_s
        self.progress = progress or _Progress()
        self.bucket_bytes = bucket_bytes
        self.last_push: WeightPush | None = None
        self._broken: str | None = None
        self._closed = False
        self._nccl_ready = False
        actor_cls = ray.remote(_GeneratorActor)
        self.actors = [
            actor_cls.options(**placement.generator_options(r)).remote(
                choice, dataclasses.replace(ctx, seed=ctx.seed + r * REPLICA_SEED_STRIDE)
            )
            for r in range(replicas)
        ]
        self.labels = [f"generator replica {r}" for r in range(replicas)]
        try:
            self.nodes = [info["node_id"] for info in self._call_all("node")]
        except BaseException:
            _kill(self.actors)
            raise
        self.use_nccl = placement.cfg.ray.placement == "separate" and placement.cfg.ray.gpus_per_worker > 0

    def wait(self, refs: Sequence[Any], replicas: Sequence[int], call: str, **kwargs: Any) -> list[Any]:
        if self._broken is not None:
            raise RayWorkerError(f"the generator pool failed earlier and cannot be used: {self._broken}")
        try:
            return wait_all(
                refs,
                [self.labels[r] for r in replicas],
                call=call,
                step=self.progress.step,
                timeout_s=self.timeout_s,
                error=RayWorkerError,
                **kwargs,
            )
        except RlxError as exc:
            self._broken = str(exc)
            raise

    def _call_all(self, call: str, *args: Any) -> list[Any]:
        refs = [getattr(actor, call).remote(*args) for actor in self.actors]
        return self.wait(refs, range(len(self.actors)), call)

    # ---------------------------------------------------------------------------------------- Generator

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        refs, owners, start = [], [], 0
        for replica, count in enumerate(row_counts(len(prompts), len(self.actors))):
            if count:
                block = [list(p) for p in prompts[start : start + count]]
                refs.append(self.actors[replica].generate.remote(block, replica_params(params, replica)))
                owners.append(replica)
            start += count
        return [group for part in self.wait(refs, owners, "generate") for group in part]

    def update_weights(self, weights: NamedTensors) -> None:
        """Push new weights to every replica: straight from trainer rank 0 when `weights` is its stream (object
        store, or NCCL with separate GPU pools), else bucketed from this process through the object store."""
        t0 = time.perf_counter()
        replicas = range(len(self.actors))
        self._call_all("begin_update")
        stats = {"bytes": 0, "buckets": 0, "tensors": 0}
        if isinstance(weights, RayWeightStream) and self.use_nccl:
            transport = "nccl"
            self._push_nccl(weights, stats)
        else:
            transport = "object-store"
            if isinstance(weights, RayWeightStream):
                weights.open(self.bucket_bytes)
                source = weights.next_bucket
            else:
                source = self._driver_buckets(weights)
            in_flight: list[Any] = []
            while True:
                meta, ref = source()
                if meta is None:
                    break
                loads = [actor.load_bucket.remote(ref) for actor in self.actors]
                del ref  # the replicas hold it now; freed once every replica has loaded it
                # at most two buckets in flight: rank 0 gathers the next while the replicas load this one
                if in_flight:
                    self.wait(in_flight, replicas, "update_weights", fetch=False)
                in_flight = loads
                stats["bytes"] += meta["bytes"]
                stats["tensors"] += meta["tensors"]
                stats["buckets"] += 1
            if in_flight:
                self.wait(in_flight, replicas, "update_weights", fetch=False)
        load_seconds = max(self._call_all("end_update"), default=0.0)
        self.progress.pushes += 1
        self.last_push = WeightPush(
            time.perf_counter() - t0, stats["bytes"], stats["buckets"], stats["tensors"], transport, load_seconds
        )
        log.info(
            "weight push %d via %s: %.1f MB in %d buckets to %d replicas, %.3f s",
            self.progress.pushes,
            transport,
            stats["bytes"] / 1e6,
            stats["buckets"],
            len(self.actors),
            self.last_push.seconds,
        )

    def _driver_buckets(self, weights: NamedTensors) -> Callable[[], tuple[dict[str, int] | None, Any]]:
        buckets = iter_buckets(weights, self.bucket_bytes)

        def next_bucket() -> tuple[dict[str, int] | None, Any]:
            bucket = next(buckets, None)
            if bucket is None:
                return None, None
            bucket = [(name, tensor.detach().cpu()) for name, tensor in bucket]
            meta = {"tensors": len(bucket), "bytes": sum(tensor_bytes(t) for _, t in bucket)}
            return meta, ray.put(bucket)

        return next_bucket

    def _push_nccl(self, weights: RayWeightStream, stats: dict[str, int]) -> None:
        """NCCL broadcast from trainer rank 0 to every replica, bucket by bucket (separate GPU pools)."""
        group = weights.group
        rank0 = group.actors[0]
        if not self._nccl_ready:
            (port,) = group.wait([rank0.free_port.remote()], [0], "free_port")
            world = len(self.actors) + 1
            host = group.ips[0]
            joins = [rank0.join_weight_group.remote(host, port, world, self.timeout_s)]
            joins += [
                a.join_weight_group.remote(host, port, r + 1, world, self.timeout_s) for r, a in enumerate(self.actors)
            ]
            self.wait(joins, [0, *range(len(self.actors))], "join_weight_group")
            self._nccl_ready = True
        weights.open(self.bucket_bytes, on_device=True)
        while (meta := weights.next_nccl_bucket()) is not None:
            refs = [rank0.send_nccl_bucket.remote()] + [a.receive_nccl_bucket.remote(meta) for a in self.actors]
            self.wait(refs, [0, *range(len(self.actors))], "update_weights (nccl)")
            stats["tensors"] += len(meta)
            stats["bytes"] += sum(
                math.prod(shape) * torch.empty((), dtype=dtype).element_size() for _, shape, dtype in meta
            )
            stats["buckets"] += 1

    def sleep(self) -> None:
        self._call_all("sleep")

    def wake_up(self) -> None:
        self._call_all("wake_up")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._broken is None:
            _close_gracefully(self.actors, min(self.timeout_s, 60.0))
        else:
            _kill(self.actors)


# ------------------------------------------------------------------------------------------------- environment


class RayEnvironmentPool:
    """An `Environment` whose `score` runs on Ray workers (contiguous blocks, results in order); `problems` stays
    with the local environment it wraps (the driver already built it, and owns closing it)."""

    def __init__(
        self,
        local: Environment,
        choice: Choice,
        ctx: BuildContext,
        *,
        workers: int,
        placement: Placement,
        timeout_s: float,
        progress: _Progress | None = None,
    ) -> None:
        self.local = local
        self.timeout_s = timeout_s
        self.progress = progress or _Progress()
        self._closed = False
        actor_cls = ray.remote(_EnvironmentActor)
        self.actors = [
            actor_cls.options(**placement.environment_options()).remote(choice, ctx)
            for _ in range(workers)
        ]
        self.labels = [f"environment worker {w}" for w in range(workers)]
        try:
            refs = [a.node.remote() for a in self.actors]
            self.nodes = [info["node_id"] for info in self._wait(refs, range(workers), "node")]
        except BaseException:
            _kill(self.actors)
            raise

    def _wait(self, refs: Sequence[Any], workers: Sequence[int], call: str) -> list[Any]:
        return wait_all(
            refs,
            [self.labels[w] for w in workers],
            call=call,
            step=self.progress.step,
            timeout_s=self.timeout_s,
            error=RayWorkerError,
        )

    def problems(self, split: Split) -> Sequence[Problem]:
        return self.local.problems(split)

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        if len(problems) != len(completions):
            raise ValueError(f"score: {len(problems)} problems but {len(completions)} completions")
        refs, owners, start = [], [], 0
        for worker, count in enumerate(row_counts(len(problems), len(self.actors))):
            if count:
                refs.append(
                    self.actors[worker].score.remote(
                        list(problems[start : start + count]), list(completions[start : start + count])
                    )
                )
                owners.append(worker)
            start += count
        return [score for part in self._wait(refs, owners, "score") for score in part]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_gracefully(self.actors, 10.0)


# ------------------------------------------------------------------------------------------------- building


@dataclass
class RayComponents(Components):
    """Components on Ray; `close` also removes the placement groups (and stops a Ray this run started)."""

    placement: Placement | None = None
    started_ray: bool = False

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.placement is not None:
                self.placement.remove()
            if self.started_ray and ray.is_initialized():
                ray.shutdown()


def connect(cfg: ClusterConfig) -> bool:
    """Connect to Ray: an existing session, `cluster.address`, `RAY_ADDRESS`, or a new local Ray sized to hold
    this run. Returns whether this call started the connection (then closing the run shuts it down)."""
    if ray.is_initialized():
        return False
    address = cfg.ray.address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, configure_logging=False)
    else:
        # logical CPUs: enough for the run's bundles even on a small machine (actors mostly wait in turn)
        cpus = max(os.cpu_count() or 1, math.ceil(Placement.needed_cpus(cfg)))
        log.info("starting a local Ray with %d logical CPUs", cpus)
        ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
    return True


def build_ray_components(selection: Selection, cfg: ClusterConfig, ctx: BuildContext, env: Environment) -> Components:
    """Connect, reserve the placement groups, start trainer ranks, generator replicas and scorers; on any failure
    (or Ctrl-C) while starting, nothing is left behind."""
    started = connect(cfg)
    placement: Placement | None = None
    built: list[Any] = []
    try:
        placement = Placement(cfg)
        placement.check_feasible()
        placement.wait_ready(cfg.timeout_s)
        progress = _Progress()
        trainer = RayTrainerGroup(
            selection.trainer,
            ctx,
            world_size=cfg.trainer_workers,
            placement=placement,
            timeout_s=cfg.timeout_s,
            progress=progress,
        )
        built.append(trainer)
        generator = RayGeneratorPool(
            selection.generator,
            ctx,
            replicas=cfg.generator_replicas,
            placement=placement,
            timeout_s=cfg.timeout_s,
            progress=progress,
        )
        built.append(generator)
        env_pool = RayEnvironmentPool(
            env,
            selection.environment,
            BuildContext(seed=ctx.seed),
            workers=cfg.generator_replicas,
            placement=placement,
            timeout_s=cfg.timeout_s,
            progress=progress,
        )
    except BaseException:
        # a failed (or interrupted) start leaves nothing behind: actors, groups, the Ray it started
        for part in built:
            part.close()
        if placement is not None:
            placement.remove()
        if started:
            ray.shutdown()
        raise
    log.info(
        "ray: %d trainer ranks, %d generator replicas, %d scorers (%s, %s)",
        cfg.trainer_workers,
        cfg.generator_replicas,
        len(env_pool.actors),
        cfg.ray.placement,
        cfg.ray.strategy,
    )
    return RayComponents(generator=generator, trainer=trainer, env=env_pool, placement=placement, started_ray=started)
