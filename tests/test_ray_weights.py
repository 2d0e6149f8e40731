"""The weight-push logic of rlx.cluster.ray without a Ray cluster (seconds): packed bucket layout, the broadcast group
over gloo between 3 processes (exact delivery; a dead or stuck receiver fails the root within the group's timeout),
a replica's push bookkeeping (version forwarded only where taken, refusing to serve after an incomplete push), the
step named in messages, and which transport a placement gets."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch

pytest.importorskip("ray", reason="rlx.cluster.ray needs ray installed: pip install 'ray[default]'")

from rlx.cluster.base import free_port  # noqa: E402
from rlx.cluster.broadcast import ALIGN_BYTES, BroadcastSpec, WeightBroadcast, layout_of, pack, unpack  # noqa: E402
from rlx.cluster.ray.generator import RayGeneratorPool  # noqa: E402
from rlx.cluster.ray.placement import weight_transport  # noqa: E402
from rlx.cluster.ray.pool import StepClock  # noqa: E402
from rlx.cluster.ray.replica import GeneratorActor, PushAborted, ReplicaWeights  # noqa: E402
from rlx.config import ClusterConfig  # noqa: E402
from rlx.errors import ConfigError, WeightPushIncompleteError  # noqa: E402


def mixed_bucket() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(3, 5, generator=gen)),  # 60 bytes: the next tensor starts at 64
        ("b.bias", torch.randn(7, generator=gen).to(torch.bfloat16)),  # 14 bytes
        ("c.count", torch.tensor(12345678901, dtype=torch.int64)),  # 0-dim
        ("d.mask", torch.tensor([True, False, True])),
        ("e.empty", torch.empty(0, 4)),
        ("f.strided", torch.arange(12, dtype=torch.float32).reshape(3, 4).t()),  # not contiguous
    ]


def test_pack_unpack_round_trips_every_dtype_and_shape_exactly() -> None:
    bucket = mixed_bucket()
    layout, buffer = pack(bucket)
    assert [slot.offset for slot in layout.slots] == [0, 64, 80, 96, 112, 112]
    assert layout.nbytes == 160 and buffer.numel() == 160 and buffer.dtype == torch.uint8
    assert layout.tensor_bytes == 60 + 14 + 8 + 3 + 0 + 48
    assert all(slot.offset % ALIGN_BYTES == 0 for slot in layout.slots)
    unpacked = unpack(layout, buffer.clone())
    assert [name for name, _ in unpacked] == [name for name, _ in bucket]
    for (_, got), (_, want) in zip(unpacked, bucket, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    assert layout_of(bucket) == layout


# ------------------------------------------------------------------------------------- broadcast over gloo

BUCKETS = [mixed_bucket(), [("g.large", torch.arange(1 << 20, dtype=torch.float32))]]  # 4 MB: beyond socket buffers


def _member(rank: int, spec: BroadcastSpec, mode: str, results: multiprocessing.Queue) -> None:
    """Rank 0 sends BUCKETS; rank 2 dies or stops when `mode` says so; everyone reports what happened."""
    try:
        group = WeightBroadcast(spec, rank)
        if rank == 2 and mode == "dead":
            os._exit(3)
        if rank == 2 and mode == "stuck":
            os.kill(os.getpid(), signal.SIGSTOP)
        for bucket in BUCKETS:
            layout, buffer = pack(bucket)
            if rank == 0:
                group.send(buffer)
            else:
                received = group.receive(layout)
                assert all(torch.equal(got, want) for (_, got), (_, want) in zip(received, bucket, strict=True))
        results.put((rank, "ok"))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put((rank, f"{type(exc).__name__}: {exc}"))


def _broadcast_run(mode: str, timeout_s: float) -> dict[int, str]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    spec = BroadcastSpec("127.0.0.1", free_port(), 3, "gloo", timeout_s, name=f"test-{mode}")
    procs = [ctx.Process(target=_member, args=(rank, spec, mode, results), daemon=True) for rank in range(3)]
    for proc in procs:
        proc.start()
    expected = 3 if mode == "ok" else 2
    out = dict(results.get(timeout=120) for _ in range(expected))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(10)
    return out


def test_broadcast_delivers_every_bucket_exactly_to_every_receiver() -> None:
    assert _broadcast_run("ok", timeout_s=60) == {0: "ok", 1: "ok", 2: "ok"}


@pytest.mark.parametrize("mode", ["dead", "stuck"])
def test_broadcast_to_a_dead_or_stuck_receiver_fails_the_root(mode: str) -> None:
    """The root's send ends with an error (gloo: connection reset, or its timeout) instead of waiting forever; the
    live receiver returns too: with every bucket, or with an error once the root gave up (then it holds a partial
    push, which is why a replica refuses to serve until a later push completes)."""
    out = _broadcast_run(mode, timeout_s=5)
    # stuck: its own timeout, or the live receiver's exit once that one timed out waiting (whichever comes first)
    ends = ("Connection reset", "Timed out", "Connection closed by peer")
    assert out[0].startswith("RuntimeError") and any(end in out[0] for end in ends), out[0]
    assert out[1] == "ok" or (out[1].startswith("RuntimeError") and any(end in out[1] for end in ends)), out[1]


# ------------------------------------------------------------------------------------- a replica's pushes


class PlainGenerator:
    def __init__(self, fail_on: str | None = None) -> None:
        self.loaded: dict[str, torch.Tensor] = {}
        self.fail_on = fail_on
        self.errors: list[BaseException] = []

    def update_weights(self, weights):  # noqa: ANN001, ANN201 - the contract's plain signature
        try:
            for name, tensor in weights:
                if name == self.fail_on:
                    raise KeyError(name)
                self.loaded[name] = tensor.clone()
        except BaseException as exc:
            self.errors.append(exc)
            raise


class VersionedGenerator(PlainGenerator):
    def __init__(self) -> None:
        super().__init__()
        self.versions: list[int | None] = []

    def update_weights(self, weights, *, version: int | None = None):  # noqa: ANN001, ANN201
        self.versions.append(version)
        super().update_weights(weights)


def test_version_reaches_only_generators_that_take_it() -> None:
    versioned = VersionedGenerator()
    weights = ReplicaWeights(versioned, "generator replica 0")
    weights.begin(7)
    weights.load([("w", torch.ones(2))])
    weights.end()
    assert versioned.versions == [7] and weights.version == 7 and torch.equal(versioned.loaded["w"], torch.ones(2))
    plain = PlainGenerator()
    weights = ReplicaWeights(plain, "generator replica 1")  # called without `version`: would raise TypeError
    weights.begin(7)
    weights.load([("w", torch.ones(2))])
    weights.end()
    assert weights.version == 7 and torch.equal(plain.loaded["w"], torch.ones(2))


def test_incomplete_push_refuses_to_serve_until_a_later_push_completes() -> None:
    generator = PlainGenerator()
    weights = ReplicaWeights(generator, "generator replica 1")
    weights.check_serving()  # the weights it was built with
    weights.begin(3)
    weights.load([("a", torch.zeros(2))])
    with pytest.raises(WeightPushIncompleteError) as info:
        weights.check_serving()
    assert str(info.value).startswith(
        "generator replica 1 refuses to serve: the weight push of version 3 did not complete (it was still running)"
    )
    weights.begin(4)  # the next push abandons the unfinished one ...
    assert len(generator.errors) == 1 and isinstance(generator.errors[0], PushAborted)
    with pytest.raises(WeightPushIncompleteError, match="version 4 did not complete"):
        weights.check_serving()
    weights.load([("a", torch.ones(2)), ("b", torch.ones(1))])
    with pytest.raises(WeightPushIncompleteError):
        weights.check_serving()
    assert weights.end() >= 0.0  # ... and serves once it completes
    weights.check_serving()
    assert weights.version == 4 and torch.equal(generator.loaded["a"], torch.ones(2))


def test_push_whose_update_weights_raises_leaves_the_replica_refusing() -> None:
    generator = PlainGenerator(fail_on="bad")
    weights = ReplicaWeights(generator, "generator replica 0")
    weights.begin(5)
    deadline = time.monotonic() + 30
    with pytest.raises(RuntimeError, match="KeyError"):
        while time.monotonic() < deadline:  # the failure surfaces at the next bucket or at the end
            weights.load([("bad", torch.zeros(1))])
        weights.end()
    with pytest.raises(WeightPushIncompleteError):
        weights.check_serving()
    assert weights.version is None
    with pytest.raises(RuntimeError, match="outside a push"):
        ReplicaWeights(generator, "generator replica 0").load([("a", torch.zeros(1))])


class DroppingGenerator:
    can_drop_weights_on_sleep = True

    def __init__(self) -> None:
        self.sleeps: list[bool] = []

    def sleep(self, drop_weights: bool = False) -> None:
        self.sleeps.append(drop_weights)


class KeepingGenerator:
    def __init__(self) -> None:
        self.sleeps = 0

    def sleep(self) -> None:
        self.sleeps += 1


def test_replicas_and_the_pool_forward_the_drop_weights_capability_and_keyword() -> None:
    actors = [object.__new__(GeneratorActor) for _ in range(2)]
    actors[0].generator, actors[1].generator = DroppingGenerator(), KeepingGenerator()
    for actor in actors:
        actor.sleep(drop_weights=True)
        actor.sleep()
    assert actors[0].generator.sleeps == [True, False] and actors[1].generator.sleeps == 2
    assert [actor.can_drop_weights_on_sleep() for actor in actors] == [True, False]

    class Pool:  # ActorPool.call_all, on the two actors in this process
        def call_all(self, call, **kwargs):  # noqa: ANN001, ANN201, ANN003
            return [getattr(actor, call)(**kwargs) for actor in self.actors]

    pool = object.__new__(RayGeneratorPool)
    pool.pool, pool._can_drop_weights = Pool(), None
    pool.pool.actors = actors
    assert not pool.can_drop_weights_on_sleep  # one replica cannot
    pool.pool.actors, pool._can_drop_weights = actors[:1], None
    assert pool.can_drop_weights_on_sleep
    pool.sleep(drop_weights=True)
    assert actors[0].generator.sleeps == [True, False, True]


def test_step_clock_names_the_step_from_the_pushed_version() -> None:
    clock = StepClock()
    assert clock.where() == "before the first weight push"
    clock.pushed(40)  # a run resumed from the checkpoint of step 40 pushes its weights first
    assert clock.where() == "at step 41"
    clock.pushed(41)
    assert clock.where() == "at step 42"
    clock.pushed(None)
    assert clock.where() == "after weight push 3 of this process (pushed without a version)"


@pytest.mark.parametrize(
    ("ray_options", "expected"),
    [
        ({}, "object-store"),
        ({"placement": "separate"}, "object-store"),
        ({"placement": "separate", "gpus_per_worker": 1}, "nccl"),
        ({"placement": "colocated", "gpus_per_worker": 1}, "object-store"),
        ({"weight_transport": "broadcast"}, "gloo"),
        ({"weight_transport": "broadcast", "placement": "separate", "gpus_per_worker": 1}, "nccl"),
        ({"weight_transport": "object-store", "placement": "separate", "gpus_per_worker": 1}, "object-store"),
    ],
)
def test_weight_transport_follows_placement_and_devices(ray_options: dict, expected: str) -> None:
    assert weight_transport(ClusterConfig(kind="ray", ray=ray_options)) == expected


def test_broadcast_between_colocated_gpus_is_one_clear_error() -> None:
    cfg = ClusterConfig(kind="ray", ray={"weight_transport": "broadcast", "gpus_per_worker": 1})
    with pytest.raises(ConfigError, match="placement=separate"):
        weight_transport(cfg)
