"""The asynchronous rollout producer on its own, with a fake synchronous producer: the staleness bound, which
version generates each batch, stale groups dropped and counted, pushes waiting for the batch in generation, and
failures and hangs reported as named errors instead of hanging the trainer."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from rlx.async_producer import AsyncRolloutProducer
from rlx.errors import RolloutProducerError
from rlx.producer import StepRollouts


class FakeGenerator:
    def __init__(self, events: list) -> None:
        self.events = events

    def update_weights(self, weights, version=None) -> None:  # noqa: ANN001
        self.events.append(("push", version, dict(weights)["w"].item()))


class FakeProducer:
    """Batches of 2 groups x 2 samples; each sample carries the version `sample_version(batch)` (None: unknown)."""

    def __init__(self, *, block: threading.Event | None = None, block_from: int = 0, fail_at: int | None = None,
                 sample_version=lambda batch: None) -> None:  # noqa: ANN001
        self.events: list = []
        self.collector = SimpleNamespace(generator=FakeGenerator(self.events))
        self.keep_awake = False
        self.block, self.block_from, self.fail_at, self.sample_version = block, block_from, fail_at, sample_version
        self.batches = 0

    def produce(self, step_seed: int) -> StepRollouts:
        batch = self.batches
        self.events.append(("start", batch))
        if self.block is not None and batch >= self.block_from:
            self.block.wait(10)
        if batch == self.fail_at:
            raise ValueError("the engine died")
        self.batches += 1
        version = self.sample_version(batch)
        groups = [[SimpleNamespace(policy_version=version, id=(batch, g, j)) for j in range(2)] for g in range(2)]
        self.events.append(("done", batch))
        return StepRollouts(groups, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), groups, {"seed": float(step_seed)},
                            data_state={"epoch": 0, "index": 2 * (batch + 1)})


def _producer(inner: FakeProducer, k: int, timeout_s: float = 10.0) -> AsyncRolloutProducer:
    return AsyncRolloutProducer(inner, max_staleness=k, step_seed=lambda b: 1000 + b, timeout_s=timeout_s)


def _train(producer: AsyncRolloutProducer, steps: int, start: int = 0) -> list[StepRollouts]:
    producer.start(start)
    taken = []
    for step in range(start, start + steps):
        rollouts = producer.take(step)
        taken.append(rollouts)
        producer.push(lambda v=step + 1: [("w", torch.tensor(float(v)))], step + 1)
    producer.close()
    return taken


@pytest.mark.parametrize("k", [1, 2])
def test_batch_b_is_generated_by_a_version_at_most_k_old(k):
    inner = FakeProducer()
    taken = _train(_producer(inner, k), 6)
    versions = [r.policy_version for r in taken]
    assert all(0 <= step - v <= k for step, v in enumerate(versions))
    assert versions[: k + 1] == [0] * (k + 1)  # the first k + 1 batches need no push
    assert [r.metrics["seed"] for r in taken] == [1000.0 + b for b in range(6)]  # each batch its step's seed
    assert [r.data_state["index"] for r in taken] == [2, 4, 6, 8, 10, 12]
    pushes = [e for e in inner.events if e[0] == "push"]
    assert pushes == [("push", v, float(v)) for v in range(1, 7)]
    assert inner.keep_awake  # the generator is never put to sleep between batches


def test_one_step_off_uses_exactly_the_previous_version_and_resumes_from_the_checkpoint_version():
    taken = _train(_producer(FakeProducer(), 1), 4, start=7)
    assert [r.policy_version for r in taken] == [7, 7, 8, 9]
    assert [r.metrics["async/staleness_max"] for r in taken] == [0.0, 1.0, 1.0, 1.0]
    assert [r.metrics["async/staleness_1_frac"] for r in taken] == [0.0, 1.0, 1.0, 1.0]


def test_groups_with_a_sample_older_than_the_bound_are_dropped_and_counted():
    # batch 2's samples report version 0 (an engine that kept old weights for them): 2 steps old at step 2
    inner = FakeProducer(sample_version=lambda b: 0 if b == 2 else None)
    taken = _train(_producer(inner, 1), 3)
    assert [len(r.groups) for r in taken] == [2, 2, 0]
    assert taken[2].rewards.shape == (0, 2)
    assert [r.metrics["async/dropped_stale_groups"] for r in taken] == [0.0, 0.0, 2.0]
    assert taken[2].metrics["async/staleness_max"] == 2.0
    assert len(taken[2].drawn) == 2  # reward metrics still describe what was drawn


def test_a_push_waits_for_the_batch_in_generation_and_no_batch_starts_during_a_push():
    block = threading.Event()
    inner = FakeProducer(block=block, block_from=1)  # batch 1 blocks until the test lets it finish
    producer = _producer(inner, 1)
    producer.start(0)
    producer.take(0)
    pushed = threading.Thread(target=producer.push, args=(lambda: [("w", torch.tensor(1.0))], 1))
    pushed.start()
    pushed.join(0.3)
    assert pushed.is_alive()  # waiting for batch 1
    block.set()
    pushed.join(5)
    producer.take(1)
    producer.push(lambda: [("w", torch.tensor(2.0))], 2)  # waits for batch 2, which started after push 1
    producer.close()
    order = [e[:2] for e in inner.events]
    assert order.index(("done", 1)) < order.index(("push", 1)) < order.index(("start", 2))


def test_a_producer_failure_reaches_the_trainer_as_one_named_error():
    producer = _producer(FakeProducer(fail_at=1), 1)
    producer.start(0)
    producer.take(0)
    with pytest.raises(RolloutProducerError, match=r"generating batch 1 with policy version 0: ValueError: the engine died"):
        producer.take(1)
    producer.close()


def test_a_hung_generator_is_a_deadline_error_that_says_what_it_was_doing():
    block = threading.Event()
    producer = _producer(FakeProducer(block=block), 1, timeout_s=0.3)
    producer.start(0)
    with pytest.raises(RolloutProducerError, match=r"no rollouts for step 0 within cluster.timeout_s=0.3s; it has been "
                                                    r"generating batch 0 with policy version 0"):
        producer.take(0)
    with pytest.raises(RolloutProducerError, match="the weight push of version 1 waited cluster.timeout_s=0.3s"):
        producer.push(lambda: [("w", torch.tensor(1.0))], 1)
    block.set()
    producer.close()


def test_idle_holds_the_producer_between_batches():
    inner = FakeProducer()
    producer = _producer(inner, 2)
    producer.start(0)
    producer.take(0)
    with producer.idle():
        started = sum(1 for e in inner.events if e[0] == "start")
        done = sum(1 for e in inner.events if e[0] == "done")
        assert started == done  # nothing in generation while validation runs
        threading.Event().wait(0.2)
        assert sum(1 for e in inner.events if e[0] == "start") == started
    producer.close()


def test_max_staleness_zero_is_the_synchronous_loop():
    with pytest.raises(ValueError, match="max_staleness must be >= 1"):
        _producer(FakeProducer(), 0)


class _HungGenerator:
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def update_weights(self, weights, version=None) -> None:  # noqa: ANN001
        list(weights)
        self.release.wait(10)


def test_a_weight_push_past_its_deadline_names_the_version_and_the_stuck_side():
    from rlx.errors import WeightPushTimeoutError
    from rlx.generation import push_weights_within

    release = threading.Event()
    with pytest.raises(WeightPushTimeoutError, match=r"the weight push of version 3 did not finish within "
                                                     r"cluster.timeout_s=0.2s: the generator had taken every tensor"):
        push_weights_within(_HungGenerator(release), [("a", torch.zeros(1))], 3, timeout_s=0.2)
    release.set()

    def stuck_stream():  # noqa: ANN202 - the trainer's side stops after one tensor
        yield "a", torch.zeros(1)
        release.clear()
        release.wait(10)
        yield "b", torch.zeros(1)

    with pytest.raises(WeightPushTimeoutError, match=r"the trainer's weight stream stopped after 1 tensor\(s\) "
                                                     r"\(the last one 'a'\)"):
        push_weights_within(FakeGenerator([]), stuck_stream(), 4, timeout_s=0.2)
    release.set()

    class Broken:
        def update_weights(self, weights, version=None) -> None:  # noqa: ANN001
            raise RuntimeError("bucket 2 failed")

    with pytest.raises(RuntimeError, match="bucket 2 failed"):
        push_weights_within(Broken(), [("a", torch.zeros(1))], 5, timeout_s=5)
