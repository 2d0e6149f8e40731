"""rlx on Ray with GPUs (needs 2 CUDA GPUs on one host): the trainer on one GPU, a generator replica on the other
(`placement=separate`), weights pushed by NCCL broadcast; a stuck or dead replica fails the push within the deadline
with a named error, and the pool refuses to generate until a later push completes. Never run yet (no multi-GPU
machine was lent); run with `python -m pytest tests/test_ray_gpu.py -q`.
"""

from __future__ import annotations

import os

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray cluster backend needs ray installed: pip install 'ray[default]'")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.ray,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs on one host (NCCL between pools)"),
]

from tests.test_ray import (  # noqa: E402
    _assert_all_stopped,
    assert_failed_pushes_refuse_until_a_later_push,
    build_direct,
    greedy_tokens,
    make_plan,
)

GPU_RAY = [
    "cluster.kind=ray",
    "cluster.timeout_s=300",
    "cluster.trainer_workers=1",
    "cluster.generator_replicas=1",
    "cluster.ray.placement=separate",
    "cluster.ray.gpus_per_worker=1",
    "cluster.ray.cpus_per_worker=1",
]


@pytest.fixture(scope="module")
def gpu_ray():
    ray.init(num_cpus=max(os.cpu_count() or 4, 4), num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_nccl_push_between_separate_gpu_pools(gpu_ray, tmp_path):
    components, _ = build_direct(make_plan(tmp_path, *GPU_RAY))
    try:
        generator, trainer = components.generator, components.trainer
        gpus = {*trainer.pool.infos[0]["gpu_ids"], *generator.pool.infos[0]["gpu_ids"]}
        assert len(gpus) == 2, f"trainer and generator share a GPU: {trainer.placement() + generator.placement()}"
        assert generator.transport == "nccl"  # cluster.ray.weight_transport=auto, separate GPU pools
        generator.timeout_s = 60
        before = greedy_tokens(generator)  # the freshly built engine

        weights = list(trainer.named_weights())
        noise = torch.Generator().manual_seed(0)
        generator.update_weights(iter([(n, t.cpu() + torch.randn(t.shape, generator=noise)) for n, t in weights]))
        assert greedy_tokens(generator) != before
        generator.bucket_bytes = 64 << 10  # several buckets even for the tiny model
        generator.update_weights(trainer.named_weights(), version=1)
        push = generator.last_push
        assert (push.transport, push.version, push.tensors) == ("nccl", 1, len(weights)) and push.buckets > 1
        print(f"nccl push: {push.bytes / 1e6:.1f} MB in {push.buckets} buckets, {push.seconds:.3f} s")
        assert greedy_tokens(generator) == before  # the same weights as the fresh engine

        generator.timeout_s = 20
        assert_failed_pushes_refuse_until_a_later_push(generator, trainer, replica=0, version=2, expected=before)
    finally:
        components.close()
    _assert_all_stopped(components)
