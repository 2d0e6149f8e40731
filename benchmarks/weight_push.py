"""Seconds per weight push on Ray, trainer rank 0 -> every generator replica, by transport (object store, gloo or
NCCL broadcast), for a random Qwen2-shaped model; after every push the replicas' greedy samples must equal the
ones they gave with the weights they were built with (the pushed weights are the same).

    python benchmarks/weight_push.py --shape small --transports object-store gloo        # CPU, ~27M parameters
    python benchmarks/weight_push.py --shape 1.5b --gpus --transports object-store nccl  # 2 GPUs, separate pools

Starts a local Ray (or joins RAY_ADDRESS). `fsdp` trainer with 1 rank, `hf` generator replicas, placement
`separate`. Prints a table and writes JSON (--out). Times are the driver's wall time for the whole push.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import ray
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlx.cluster.ray import Placement, RayGeneratorPool, RayTrainerGroup
from rlx.config import ClusterConfig
from rlx.interfaces import ModelSpec, SamplingParams
from rlx.models.tiny import build_tokenizer, default_corpus
from rlx.plan import Choice
from rlx.registry import BuildContext

SHAPES = {
    "small": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=4096,
    ),
    # Qwen2.5-1.5B (DeepSeek-R1-Distill-Qwen-1.5B has the same shapes)
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
}


def save_model(shape: str, folder: str) -> str:
    """Random weights (HF init, seed 0; bf16 for 1.5b, fp32 otherwise) and the tiny tokenizer."""
    torch.manual_seed(0)
    config = Qwen2Config(**SHAPES[shape], tie_word_embeddings=False, max_position_embeddings=4096)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16 if shape == "1.5b" else torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer(default_corpus()).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument(
        "--transports", nargs="+", default=["object-store", "gloo"], choices=["object-store", "gloo", "nccl"]
    )
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=256)
    parser.add_argument("--gpus", action="store_true", help="one GPU per worker (trainer and each replica)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    gpus = 1.0 if args.gpus else 0.0
    cfg = ClusterConfig(
        kind="ray",
        generator_replicas=args.replicas,
        timeout_s=600,
        ray={"placement": "separate", "gpus_per_worker": gpus, "cpus_per_worker": 0.5},
    )
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address="auto", log_to_driver=False)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 2, 4), include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        ctx = BuildContext(seed=0, model=ModelSpec(path=save_model(args.shape, folder)))
        placement = Placement(cfg)
        placement.check_feasible()
        placement.wait_ready(cfg.timeout_s)
        trainer = RayTrainerGroup(
            Choice.named("trainer", "fsdp"), ctx, world_size=1, placement=placement, timeout_s=600
        )
        generator = RayGeneratorPool(
            Choice.named("generator", "hf"),
            ctx,
            replicas=args.replicas,
            placement=placement,
            timeout_s=600,
            bucket_bytes=args.bucket_mb << 20,
        )
        try:
            prompts = [[5, 6, 7, 8], [9, 10, 11]] * args.replicas
            greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=8, seed=0)

            def tokens() -> list[list[tuple[int, ...]]]:  # not the completions: they carry the pushed version
                return [[c.token_ids for c in group] for group in generator.generate(prompts, greedy)]

            fresh = tokens()
            version = 0
            for transport in args.transports:
                generator.transport = transport  # type: ignore[assignment]
                seconds = []
                for _ in range(args.pushes + 1):  # the first push of a transport also sets it up: not counted
                    version += 1
                    generator.update_weights(trainer.named_weights(), version=version)
                    seconds.append(generator.last_push.seconds)
                    assert tokens() == fresh, f"{transport}: samples changed after the push"
                push = generator.last_push
                rows.append(
                    {
                        "transport": push.transport,
                        "mb": push.bytes / 1e6,
                        "buckets": push.buckets,
                        "first_s": seconds[0],
                        "median_s": statistics.median(seconds[1:]),
                        "gb_per_s": push.bytes / 1e9 / statistics.median(seconds[1:]),
                    }
                )
        finally:
            generator.close()
            trainer.close()
            placement.remove()
    print(
        f"weight push, shape {args.shape}, {args.replicas} replica(s), {'GPU' if gpus else 'CPU'}, "
        f"buckets of {args.bucket_mb} MB, median of {args.pushes} pushes"
    )
    print(f"{'transport':<13} {'MB':>9} {'buckets':>8} {'first s':>8} {'median s':>9} {'GB/s':>7}")
    for r in rows:
        print(
            f"{r['transport']:<13} {r['mb']:>9.1f} {r['buckets']:>8d} {r['first_s']:>8.3f} {r['median_s']:>9.3f} "
            f"{r['gb_per_s']:>7.2f}"
        )
    if args.out:
        meta = {
            "shape": args.shape,
            "replicas": args.replicas,
            "gpus": bool(gpus),
            "bucket_mb": args.bucket_mb,
            "pushes": args.pushes,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
