"""Throughput of the builtin `fsdp` trainer on a Qwen2.5-1.5B-shaped model with random weights (no download).

Times `train_step` (forward + backward + AdamW step, GRPO loss) and `logprobs` (forward only) on random token
batches, and prints step time, tokens/s and MFU against a dense bf16 peak (989 TFLOP/s: H100 SXM).

    python benchmarks/trainer_throughput.py --out results.json                 # one GPU
    torchrun --nproc-per-node 8 benchmarks/trainer_throughput.py               # FSDP over 8 GPUs
    python benchmarks/trainer_throughput.py --tiny --batch 4 --seq-len 64      # CPU smoke test

FLOPs per token: 6 * N for train_step and 2 * N for logprobs, where N counts the parameters used in matrix
products (every parameter but the input embedding, plus the LM head even when tied), plus causal attention:
6 * layers * hidden * T (train) and 2 * layers * hidden * T (logprobs), T the sequence length. Recomputation
(the chunked LM head in backward, activation checkpointing) is not counted, as is usual for MFU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.grpo.losses import policy_loss
from rlx.interfaces import ModelSpec, TrainBatch
from rlx.registry import load_factory


def model_config(tiny: bool) -> Qwen2Config:
    """Qwen2.5-1.5B's shape (or a tiny one for a CPU smoke test)."""
    if tiny:
        shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=512)  # fmt: skip
    else:
        shape = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, vocab_size=151936)  # fmt: skip
    return Qwen2Config(
        **shape,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
    )


def save_random_model(config: Qwen2Config, out_dir: str, seed: int) -> None:
    """Random weights (HF init), saved in bf16 with save_pretrained, as a downloaded checkpoint would be."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)


def matmul_params(config: Qwen2Config) -> int:
    """Parameters used in matrix products per token: all but the input embedding, LM head counted once."""
    h, i, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads
    head_dim = h // config.num_attention_heads
    attention = h * h + 2 * h * kv * head_dim + h * h  # q, k, v, o (biases are negligible)
    mlp = 3 * h * i
    return config.num_hidden_layers * (attention + mlp) + config.vocab_size * h


def random_batch(rows: int, seq_len: int, vocab: int, seed: int) -> TrainBatch:
    """Full-length sequences: the first eighth is the prompt, the rest the completion; token-mean weights."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (rows, seq_len), generator=gen)
    attention_mask = torch.ones(rows, seq_len, dtype=torch.long)
    completion_mask = torch.zeros(rows, seq_len, dtype=torch.bool)
    completion_mask[:, seq_len // 8 :] = True
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        old_logprobs=torch.full((rows, seq_len), -10.0),
        advantages=torch.randn(rows, generator=gen),
        loss_weights=completion_mask.float() / completion_mask.sum(),
    )


def timed(fn: Any, device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def profile_step(trainer: Any, batch: TrainBatch, loss_fn: Any, rank: int) -> None:
    """One train_step + logprobs under torch.profiler; prints where the time goes (rank 0)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for name, call in (
        ("train_step", lambda: trainer.train_step(batch, loss_fn)),
        ("logprobs", lambda: trainer.logprobs(batch)),
    ):
        with profile(activities=activities) as prof:
            timed(call, trainer.device)
        if rank == 0:
            sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            print(f"\n--- profile: {name} (top ops by {sort}) ---")
            print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke test)")
    parser.add_argument("--batch", type=int, default=64, help="sequences per train_step (global)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after --warmup ones)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument(
        "--no-reshard-after-forward",
        action="store_true",
        help="keep gathered layer weights from forward to backward (ZeRO-2-like: fewer gathers, more memory)",
    )
    parser.add_argument("--logits-chunk-tokens", type=int, default=1024)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100 SXM)")
    parser.add_argument("--work-dir", default=None, help="where the random checkpoint is written (default: tmp)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--profile", action="store_true", help="profile one more step; print the top ops")
    parser.add_argument(
        "--factory",
        default="rlx.builtin.fsdp_trainer:FSDPTrainer",
        help="trainer factory import string taking FSDPTrainerConfig (to compare implementations)",
    )
    args = parser.parse_args()

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():  # under torchrun: one rank per GPU
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.batch % world_size:
        raise SystemExit(f"--batch ({args.batch}) must be a multiple of the number of ranks ({world_size})")

    config = model_config(args.tiny)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="rlx-bench-")
    model_dir = os.path.join(work_dir, "model")
    if rank == 0 and not os.path.isfile(os.path.join(model_dir, "config.json")):
        started = time.perf_counter()
        save_random_model(config, model_dir, seed=0)
        print(f"random model written to {model_dir} in {time.perf_counter() - started:.1f} s", flush=True)
    if dist.is_initialized():
        dist.barrier()

    trainer_config = FSDPTrainerConfig(
        lr=1e-6,
        micro_batch_size=args.micro_batch,
        activation_checkpointing=args.activation_checkpointing,
        reshard_after_forward=not args.no_reshard_after_forward,
        logits_chunk_tokens=args.logits_chunk_tokens,
        device=args.device,
    )
    started = time.perf_counter()
    factory = load_factory(args.factory)
    trainer = factory(trainer_config, model=ModelSpec(model_dir), seed=0, with_reference=False)
    build_s = time.perf_counter() - started
    device = trainer.device
    per_rank = args.batch // trainer.world_size
    loss_fn = functools.partial(policy_loss, clip_low=0.2, clip_high=0.28)
    n_matmul = matmul_params(config)
    layers, hidden = config.num_hidden_layers, config.hidden_size

    def shard(seed: int) -> TrainBatch:
        batch = random_batch(args.batch, args.seq_len, config.vocab_size, seed)
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        return TrainBatch(**{k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()})

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    phases: dict[str, list[float]] = {"train_step": [], "logprobs": []}
    last_metrics: dict[str, float] = {}
    for step in range(args.warmup + args.steps):
        batch = shard(seed=step)
        train_s, last_metrics = timed(lambda b=batch: trainer.train_step(b, loss_fn), device)
        logprobs_s, _ = timed(lambda b=batch: trainer.logprobs(b), device)
        if step >= args.warmup:
            phases["train_step"].append(train_s)
            phases["logprobs"].append(logprobs_s)
        if rank == 0:
            label = "warm-up" if step < args.warmup else "timed"
            print(
                f"step {step} ({label}): train_step {train_s:.3f} s, logprobs {logprobs_s:.3f} s, "
                f"loss {last_metrics['loss']:.4f}, grad_norm {last_metrics['grad_norm']:.3f}",
                flush=True,
            )

    if args.profile:
        profile_step(trainer, shard(seed=0), loss_fn, rank)

    tokens = args.batch * args.seq_len  # global, per call
    flops_per_token = {
        "train_step": 6 * n_matmul + 6 * layers * hidden * args.seq_len,
        "logprobs": 2 * n_matmul + 2 * layers * hidden * args.seq_len,
    }
    gpus = trainer.world_size
    rows = []
    for phase, times in phases.items():
        step_s = statistics.median(times)
        tflops = flops_per_token[phase] * tokens / step_s / 1e12
        rows.append(
            {
                "phase": phase,
                "step_s": step_s,
                "tokens_per_s": tokens / step_s,
                "tflops_per_gpu": tflops / gpus,
                "mfu": tflops / gpus / args.peak_tflops if device.type == "cuda" else None,
            }
        )
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "model": "tiny" if args.tiny else "qwen2.5-1.5b-shape (random weights)",
        "matmul_params": n_matmul,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ranks": gpus,
        "dtype": str(trainer.compute_dtype),
        "batch": args.batch,
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "activation_checkpointing": args.activation_checkpointing,
        "reshard_after_forward": not args.no_reshard_after_forward,
        "factory": args.factory,
        "steps_timed": args.steps,
        "build_s": build_s,
        "peak_memory_gib": peak_gib,
        "torch": torch.__version__,
        "results": rows,
        "last_metrics": last_metrics,
    }
    if rank == 0:
        print(
            f"\n{result['model']} on {gpus} x {result['device']}, {result['dtype']}, batch {args.batch} x "
            f"{args.seq_len} tokens, micro-batch {args.micro_batch}, activation checkpointing "
            f"{args.activation_checkpointing}, reshard after forward {not args.no_reshard_after_forward}, peak memory {peak_gib if peak_gib is None else f'{peak_gib:.1f} GiB'}"
        )
        print(f"{'phase':<12} {'step s':>9} {'tokens/s':>12} {'TFLOP/s/GPU':>12} {'MFU':>7}")
        for row in rows:
            mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
            print(
                f"{row['phase']:<12} {row['step_s']:>9.3f} {row['tokens_per_s']:>12.0f} "
                f"{row['tflops_per_gpu']:>12.1f} {mfu:>7}"
            )
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(result, handle, indent=2)
            print(f"results written to {args.out}")
    trainer.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    if args.work_dir is None and rank == 0:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
