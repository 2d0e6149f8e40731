"""Throughput and memory of the builtin `fsdp` trainer on a Qwen2.5-1.5B-shaped model (random weights, no download),
beside a plain-HF training loop on the same real tokens in the same process.

    python benchmarks/trainer_throughput.py --table --out results.json             # the whole table (one GPU)
    python benchmarks/trainer_throughput.py --lengths longtail --anchor hf         # 64 long-tailed rollouts
    python benchmarks/trainer_throughput.py --tiny --lengths longtail --out r.json # CPU smoke test
    python benchmarks/trainer_throughput.py --lengths longtail --profile --out r.json  # + where the time goes

Workloads: `uniform` (--batch rows of --seq-len tokens, the first eighth prompt) and `longtail` (--batch rollouts:
prompt 64-320 tokens, response lognormal with median 2.5K and sigma 0.8, capped at the --seq-len context; seeded;
with --tiny the lengths are scaled by seq_len / 8192). `--table` runs uniform 64 x 1024, longtail 64 @ 8K and
uniform 8 x 8192 with packed micro-batches, the HF anchor on each, and memory rows (4 full-length sequences at
8K, 16K and 24K: the DeepScaleR stages) with a budget of one 24K sequence, under full activation checkpointing
(rlx-ac) and selective (rlx-sac: matrix-product and attention outputs kept).

Each row times `train_step` (forward + backward + AdamW, the GRPO loss) and `logprobs`; the median of --steps
after --warmup. FLOPs: 6 * N per real token for training and 2 * N for logprobs (N: parameters in matrix products,
the LM head counted once even when tied), plus causal attention per sequence: 6 (or 2) * layers * hidden * L^2.
Recomputation (activation checkpointing, the chunked LM head's backward) is not counted, as is usual for MFU.
padding_fraction: the share of the positions the decoder ran on that are not real tokens. The HF anchor: the
model in bf16 (no fp32 master weights), fused AdamW, SDPA, no activation checkpointing, the real tokens of the
workload concatenated into dense rows (min(seq_len, 8192) tokens, 8192 tokens per micro-batch), HF's own loss.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.builtin.fsdp_trainer import FSDPTrainer
from rlx.grpo.losses import policy_loss
from rlx.interfaces import ModelSpec, TrainBatch

FULL_CONTEXT = 8192  # the context the long-tailed distribution is defined at


def model_config(tiny: bool) -> Qwen2Config:
    """Qwen2.5-1.5B's shape (or a tiny one for a CPU smoke test)."""
    if tiny:
        shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=512)  # fmt: skip
    else:
        shape = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, vocab_size=151936)  # fmt: skip
    return Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, use_sliding_window=False)  # fmt: skip


def save_random_model(config: Qwen2Config, out_dir: str, device: torch.device) -> None:
    """Random weights (HF init, on the GPU when there is one: much faster), saved in bf16 like a checkpoint."""
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    del model


def matmul_params(config: Qwen2Config) -> int:
    """Parameters used in matrix products per token: all but the input embedding, LM head counted once."""
    h, i, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads
    head_dim = h // config.num_attention_heads
    attention = h * h + 2 * h * kv * head_dim + h * h  # q, k, v, o (biases are negligible)
    return config.num_hidden_layers * (attention + 3 * h * i) + config.vocab_size * h


# ------------------------------------------------------------------------------------------ workloads


@dataclass
class Workload:
    name: str
    context: int
    prompt_lengths: list[int]
    lengths: list[int]  # prompt + response, <= context

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    def batch(self, vocab: int, seed: int = 0) -> TrainBatch:
        """Right-padded to the longest row; token-mean loss weights; old log-probabilities near a random model's."""
        gen = torch.Generator().manual_seed(seed)
        rows, width = len(self.lengths), max(self.lengths)
        lengths, prompts = torch.tensor(self.lengths), torch.tensor(self.prompt_lengths)
        columns = torch.arange(width)[None, :]
        attention_mask = (columns < lengths[:, None]).long()
        completion_mask = attention_mask.bool() & (columns >= prompts[:, None])
        return TrainBatch(
            input_ids=torch.randint(0, vocab, (rows, width), generator=gen) * attention_mask,
            attention_mask=attention_mask,
            completion_mask=completion_mask,
            old_logprobs=torch.full((rows, width), -math.log(vocab)),
            advantages=torch.randn(rows, generator=gen),
            loss_weights=completion_mask.float() / completion_mask.sum(),  # token mean
        )


def uniform(rows: int, seq_len: int) -> Workload:
    return Workload(f"uniform {rows}x{seq_len}", seq_len, [seq_len // 8] * rows, [seq_len] * rows)


def longtail(rows: int, context: int, seed: int = 0) -> Workload:
    """DeepScaleR-like rollouts: prompt U[64, 320], response lognormal(median 2.5K, sigma 0.8), capped at the
    context (all lengths scaled by context / 8192 when the context is not 8K)."""
    rng = random.Random(seed)
    scale = context / FULL_CONTEXT if context < FULL_CONTEXT else 1.0
    prompts, lengths = [], []
    for _ in range(rows):
        prompt = max(1, round(rng.randint(64, 320) * scale))
        response = max(1, round(rng.lognormvariate(math.log(2500), 0.8) * scale))
        prompts.append(prompt)
        lengths.append(min(prompt + response, context))
    return Workload(f"longtail {rows} @{context}", context, prompts, lengths)


def attention_flops(workload: Workload, layers: int, hidden: int) -> int:
    """Causal attention FLOPs of one forward over the workload's sequences: 2 * layers * hidden * sum(L^2)."""
    return 2 * layers * hidden * sum(length * length for length in workload.lengths)


# ------------------------------------------------------------------------------------------ timing


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@dataclass
class Context:
    args: argparse.Namespace
    config: Qwen2Config
    model_dir: str
    device: torch.device
    peak_tflops: float

    def mfu(self, flops: float, seconds: float) -> float | None:
        return flops / seconds / 1e12 / self.peak_tflops if self.device.type == "cuda" else None


def rlx_row(ctx: Context, trainer: FSDPTrainer, workload: Workload, label: str) -> dict[str, Any]:
    """Time train_step and logprobs of one workload on a built trainer."""
    batch = workload.batch(ctx.config.vocab_size)
    loss_fn = functools.partial(policy_loss, clip_low=0.2, clip_high=0.28)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    train_times, logprob_times, metrics = [], [], {}
    for step in range(ctx.args.warmup + ctx.args.steps):
        train_s, metrics = timed(lambda: trainer.train_step(batch, loss_fn), ctx.device)
        train_plan = dict(trainer.last_call)
        logprobs_s, _ = timed(lambda: trainer.logprobs(batch), ctx.device)
        logprob_plan = dict(trainer.last_call)
        if step >= ctx.args.warmup:
            train_times.append(train_s)
            logprob_times.append(logprobs_s)
        print(f"  [{label}] {workload.name} step {step}: train {train_s:.3f} s, logprobs {logprobs_s:.3f} s, "
              f"loss {metrics['loss']:.4f}", flush=True)  # fmt: skip
    n, layers, hidden = matmul_params(ctx.config), ctx.config.num_hidden_layers, ctx.config.hidden_size
    attention = attention_flops(workload, layers, hidden)
    train_s, logprobs_s = statistics.median(train_times), statistics.median(logprob_times)
    real = workload.real_tokens
    return {
        "impl": label,
        "workload": workload.name,
        "rows": len(workload.lengths),
        "real_tokens": real,
        "train_step_s": train_s,
        "logprobs_s": logprobs_s,
        "real_tokens_per_s": real / train_s,
        "logprob_real_tokens_per_s": real / logprobs_s,
        "mfu": ctx.mfu(6 * n * real + 3 * attention, train_s),
        "logprob_mfu": ctx.mfu(2 * n * real + attention, logprobs_s),
        "padding_fraction": 1 - train_plan["real_tokens"] / train_plan["computed_tokens"],
        "micro_batches": train_plan["micro_batches"],
        "logprob_micro_batches": logprob_plan["micro_batches"],
        "peak_memory_gib": peak_gib(ctx.device),
        "grad_norm": metrics["grad_norm"],
    }


def hf_anchor_row(ctx: Context, model: Any, optimizer: torch.optim.Optimizer, workload: Workload) -> dict[str, Any]:
    """Plain HF training on the workload's real tokens, packed densely into rows (see the module docstring)."""
    row_len = min(workload.context, 8192 if not ctx.args.tiny else workload.context)
    rows_per_micro = max(1, 8192 // row_len) if not ctx.args.tiny else 4
    batch = workload.batch(ctx.config.vocab_size)
    stream = batch.input_ids[batch.attention_mask.bool()]
    rows = stream[: len(stream) // row_len * row_len].view(-1, row_len).to(ctx.device)
    micro_batches = rows.split(rows_per_micro)

    def step() -> float:
        for micro in micro_batches:
            loss = model(input_ids=micro, labels=micro).loss / len(micro_batches)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times = []
    for index in range(ctx.args.warmup + ctx.args.steps):
        seconds, loss = timed(step, ctx.device)
        if index >= ctx.args.warmup:
            times.append(seconds)
        print(f"  [hf] {workload.name} step {index}: train {seconds:.3f} s, loss {loss:.4f}", flush=True)
    train_s = statistics.median(times)
    real = rows.numel()
    n, layers, hidden = matmul_params(ctx.config), ctx.config.num_hidden_layers, ctx.config.hidden_size
    attention = 2 * layers * hidden * row_len * row_len * rows.shape[0]
    return {
        "impl": "hf",
        "workload": workload.name,
        "rows": rows.shape[0],
        "real_tokens": real,
        "train_step_s": train_s,
        "real_tokens_per_s": real / train_s,
        "mfu": ctx.mfu(6 * n * real + 3 * attention, train_s),
        "padding_fraction": 0.0,
        "micro_batches": len(micro_batches),
        "peak_memory_gib": peak_gib(ctx.device),
        "anchor_rows": f"{len(micro_batches)} x ({rows_per_micro} x {row_len})",
    }


# ------------------------------------------------------------------------------------------ checks


def exactness(ctx: Context, trainer: FSDPTrainer, hf_model: Any, workload: Workload) -> dict[str, float]:
    """Packed vs padded log-probabilities of the same trainer, and the trainer vs the HF model, on 4 rows."""
    batch = workload.batch(ctx.config.vocab_size, seed=1)
    few = TrainBatch(**{k: (v[:4] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()})
    packed = trainer.logprobs(few)
    # the same weights through padded micro-batches: the packing switch is read per call
    saved = trainer.config
    trainer.config = saved.model_copy(update={"max_tokens_per_micro_batch": None, "micro_batch_size": 1})
    try:
        padded = trainer.logprobs(few)
    finally:
        trainer.config = saved
    mask = few.completion_mask
    result = {
        "packed_vs_padded_max_abs": float((packed - padded)[mask].abs().max()),
        "packed_vs_padded_mean_abs": float((packed - padded)[mask].abs().mean()),
    }
    if hf_model is not None:
        with torch.no_grad():
            hf = []
            for row in range(4):
                length = int(few.attention_mask[row].sum())
                ids = few.input_ids[row : row + 1, :length].to(ctx.device)
                logits = hf_model(input_ids=ids).logits.float()
                logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0].cpu()
                hf.append(torch.nn.functional.pad(logp, (1, few.input_ids.shape[1] - length)))
        delta = (packed - torch.stack(hf))[mask].abs()
        result |= {"packed_vs_hf_max_abs": float(delta.max()), "packed_vs_hf_mean_abs": float(delta.mean())}
    return result


def attention_bench(ctx: Context, workload: Workload, tokens: int) -> list[dict[str, Any]]:
    """One attention layer's forward + backward on one packed micro-batch of the workload's sequences (bf16)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from rlx.builtin.fsdp_model import _flash_varlen
    from rlx.packing import first_fit_decreasing, token_budget_bins

    count = len(first_fit_decreasing(workload.lengths, tokens))
    first_bin = token_budget_bins(workload.lengths, tokens, count)[0]  # a micro-batch as the trainer packs it
    lengths = [workload.lengths[row] for row in first_bin]
    total = sum(lengths)
    heads, kv_heads, dim = ctx.config.num_attention_heads, ctx.config.num_key_value_heads, 128
    gen = torch.Generator(device=ctx.device).manual_seed(0)

    def make(h: int) -> torch.Tensor:
        return torch.randn(total, h, dim, device=ctx.device, dtype=torch.bfloat16, generator=gen).requires_grad_()

    q, k, v = make(heads), make(kv_heads), make(kv_heads)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], device=ctx.device, dtype=torch.int32)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=ctx.device), torch.tensor(lengths, device=ctx.device))
    qh, kh, vh = (x.transpose(0, 1)[None] for x in (q, k, v))  # (1, H, N, D)

    def varlen() -> torch.Tensor:
        return _flash_varlen(q, k, v, cu, max(lengths), None)

    def per_sequence() -> torch.Tensor:
        bounds = cu.tolist()
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            qh[:, :, a:b], kh[:, :, a:b], vh[:, :, a:b], is_causal=True, enable_gqa=True)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)], dim=2)  # fmt: skip

    def sdpa_mask() -> torch.Tensor:
        causal = torch.ones(total, total, device=ctx.device, dtype=torch.bool).tril()
        mask = causal & (doc[:, None] == doc[None, :])
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=True)

    block_mask = create_block_mask(lambda b, h, qi, ki: (doc[qi] == doc[ki]) & (qi >= ki), None, None, total, total)
    compiled_flex = torch.compile(flex_attention)

    def flex() -> torch.Tensor:
        return compiled_flex(qh, kh, vh, block_mask=block_mask, enable_gqa=True)

    rows = []
    useful = 2 * heads * dim * sum(n * n for n in lengths)  # causal forward FLOPs; x 3.5 with the backward
    for name, fn in (("varlen", varlen), ("flex_attention", flex), ("sdpa_per_sequence", per_sequence),
                     ("sdpa_block_mask", sdpa_mask)):  # fmt: skip
        try:
            for _ in range(2):  # warm-up (flex compiles)
                fn().sum().backward()
            seconds, _ = timed(lambda f=fn: [f().sum().backward() for _ in range(5)], ctx.device)
            ms = seconds / 5 * 1e3
            rows.append({"attention": name, "tokens": total, "sequences": len(lengths), "fwd_bwd_ms": ms,
                         "tflops": useful * 3.5 / (ms / 1e3) / 1e12})  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a kernel this torch lacks is a result too
            rows.append({"attention": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"  [attention] {rows[-1]}", flush=True)
        q.grad = k.grad = v.grad = None
    return rows


# ------------------------------------------------------------------------------------------ main


#: kernel-name patterns -> category, first match wins (cuBLAS/CUTLASS GEMMs, FlashAttention, compiled Triton, ...)
KERNEL_CATEGORIES = (
    ("communication", ("nccl",)),
    ("attention", ("flash", "fmha", "attn")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "sm90_", "sm100_")),
    ("triton (compiled)", ("triton",)),
    ("copy / fill", ("memcpy", "memset", "copy", "fill")),
    ("eager elementwise / reduce", ("elementwise", "vectorized", "reduce", "softmax", "index")),
)


def kernel_category(name: str) -> str:
    lower = name.lower()
    return next((category for category, keys in KERNEL_CATEGORIES if any(k in lower for k in keys)), "other")


def profile_calls(ctx: Context, trainer: FSDPTrainer, workload: Workload) -> dict[str, Any]:
    """One train_step and one logprobs call under torch.profiler (after the timed rows: warm, compiled): per call the
    wall time, the device's busy time (kernel time summed: below wall = the GPU waits for the host) by kernel
    category, and the top kernels. The full tables go to <--out>.profile.txt."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    batch = workload.batch(ctx.config.vocab_size)
    loss_fn = functools.partial(policy_loss, clip_low=0.2, clip_high=0.28)
    calls = {"train_step": lambda: trainer.train_step(batch, loss_fn), "logprobs": lambda: trainer.logprobs(batch)}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    report: dict[str, Any] = {}
    tables = []
    for name, call in calls.items():
        with profile(activities=activities) as prof:
            wall_s, _ = timed(call, ctx.device)
        events = prof.key_averages()
        # the device's own events (kernels, copies): host ops carry their kernels' time too, counted once here
        device_events = [e for e in events if e.device_type != DeviceType.CPU and e.self_device_time_total > 0]
        kernels = {e.key: e.self_device_time_total for e in device_events}
        calls_of = {e.key: e.count for e in device_events}
        by_category: dict[str, float] = {}
        for key, us in kernels.items():
            category = kernel_category(key)
            by_category[category] = by_category.get(category, 0.0) + us / 1e6
        busy_s = sum(kernels.values()) / 1e6
        top = sorted(kernels.items(), key=lambda item: -item[1])[:15]
        report[name] = {
            "wall_s": wall_s,
            "device_busy_s": busy_s,
            "by_category_s": dict(sorted(by_category.items(), key=lambda item: -item[1])),
            "top_kernels": [
                {"name": k[:160], "s": us / 1e6, "calls": calls_of[k]} for k, us in top
            ],
            "cpu_ops": len(events),
        }
        print(f"profile {name}: wall {wall_s:.3f} s, device busy {busy_s:.3f} s")
        for category, seconds in report[name]["by_category_s"].items():
            print(f"  {category:<28} {seconds:8.3f} s")
        for item in report[name]["top_kernels"][:8]:
            print(f"  {item['s']:8.3f} s {item['calls']:6d}x  {item['name'][:100]}")
        sort = "self_device_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
        tables.append(f"== {name}\n{events.table(sort_by=sort, row_limit=40)}")
    if ctx.args.out:
        with open(f"{ctx.args.out}.profile.txt", "w") as handle:
            handle.write("\n\n".join(tables))
    return report


def variant_row(ctx: Context, trainer: FSDPTrainer, workload: Workload, label: str, options: dict) -> dict[str, Any]:
    return rlx_row(ctx, trainer, workload, label) | {"config": options}


def build_trainer(ctx: Context, max_seq_len: int, **options: Any) -> FSDPTrainer:
    # one CPU thread: this is a smoke test on shared machines, where more threads than free cores crawl
    options = {"logits_chunk_tokens": ctx.args.logits_chunk_tokens, **options}  # a --variant may override it
    config = FSDPTrainerConfig(lr=1e-6, device=ctx.args.device, cpu_threads=1, **options)
    started = time.perf_counter()
    trainer = FSDPTrainer(config, model=ModelSpec(ctx.model_dir, max_seq_len=max_seq_len), seed=0)
    print(f"trainer built in {time.perf_counter() - started:.1f} s: {options}", flush=True)
    return trainer


def trainer_options(args: argparse.Namespace, scale: float) -> dict[str, Any]:
    if args.max_tokens is None:
        return {"micro_batch_size": args.micro_batch, "activation_checkpointing": args.activation_checkpointing,
                "reshard_after_forward": False if args.no_reshard_after_forward else "auto"}  # fmt: skip
    budget = max(2, round(args.max_tokens * scale))
    return {
        "max_tokens_per_micro_batch": budget,
        "logprob_max_tokens_per_micro_batch": max(budget, round(args.logprob_max_tokens * scale)),
        "activation_checkpointing": args.activation_checkpointing,
        "reshard_after_forward": False if args.no_reshard_after_forward else "auto",
        "attention": args.attention,
        "compile": False if args.no_compile else "auto",
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['model']} on {result['device']}, torch {result['torch']}")
    header = f"{'impl':<24} {'workload':<20} {'train s':>8} {'logp s':>7} {'real tok/s':>11} {'MFU':>6} " \
             f"{'logp MFU':>8} {'pad':>6} {'mb':>4} {'peak GiB':>8}"  # fmt: skip
    print(header)
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['impl']:<24} {row['workload']:<20} ERROR {row['error'][:80]}")
            continue

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"

        peak = "-" if row.get("peak_memory_gib") is None else f"{row['peak_memory_gib']:.1f}"
        logprobs = f"{row['logprobs_s']:.3f}" if "logprobs_s" in row else "-"
        print(f"{row['impl']:<24} {row['workload']:<20} {row['train_step_s']:>8.3f} {logprobs:>7} "
              f"{row['real_tokens_per_s']:>11.0f} {pct(row['mfu']):>6} {pct(row.get('logprob_mfu')):>8} "
              f"{100 * row['padding_fraction']:>5.1f}% {row['micro_batches']:>4} {peak:>8}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and shorter sequences (CPU smoke test)")
    parser.add_argument("--table", action="store_true", help="the whole table (see the module docstring)")
    parser.add_argument("--lengths", choices=["uniform", "longtail"], default="uniform")
    parser.add_argument("--batch", type=int, default=64, help="rows (rollouts) per train_step")
    parser.add_argument("--seq-len", type=int, default=None, help="row length / context (default 8192; tiny 1024)")
    parser.add_argument("--anchor", choices=["hf", "none"], default="hf", help="plain-HF row beside each rlx row")
    parser.add_argument("--max-tokens", type=int, default=16384, help="train token budget (0: padded rows)")
    parser.add_argument("--logprob-max-tokens", type=int, default=65536)
    parser.add_argument("--micro-batch", type=int, default=None, help="rows per micro-batch (padded mode) / cap")
    parser.add_argument("--attention", default="varlen", choices=["varlen", "varlen_sdpa", "sdpa", "flex_attention"])
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--no-reshard-after-forward", action="store_true", help="keep weights gathered per call")
    parser.add_argument("--no-compile", action="store_true", help="trainer.compile=false (default: auto, on on GPU)")
    parser.add_argument("--memory-contexts", type=int, nargs="*", default=[8192, 16384, 24576],
                        help="--table: memory rows, 4 full-length sequences each")  # fmt: skip
    parser.add_argument("--attention-bench", action="store_true", help="time the attention kernels (GPU)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="another trainer config (FSDPTrainerConfig fields) run on the long-tailed batch")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="timed steps after --warmup ones (2; tiny: 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--logits-chunk-tokens", type=int, default=1024)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM)")
    parser.add_argument("--work-dir", default=None, help="where the random checkpoint is written (default: tmp)")
    parser.add_argument("--out", default=None, help="write the results as JSON here (after every row)")
    parser.add_argument("--profile", action="store_true",
                        help="after the rlx rows, profile one train_step and one logprobs call (kernel categories, "
                        "device busy vs wall; tables in <--out>.profile.txt)")  # fmt: skip
    args = parser.parse_args()
    args.max_tokens = args.max_tokens or None
    args.steps = args.steps or (1 if args.tiny else 2)
    seq_len = args.seq_len or (1024 if args.tiny else FULL_CONTEXT)
    scale = seq_len / FULL_CONTEXT if args.tiny else 1.0  # tiny: budgets shrink with the sequences

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    config = model_config(args.tiny)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="rlx-bench-")
    model_dir = os.path.join(work_dir, "model")
    if device.type == "cpu":
        torch.set_num_threads(1)  # the HF anchor too (see build_trainer)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        started = time.perf_counter()
        save_random_model(config, model_dir, device)
        print(f"random model written to {model_dir} in {time.perf_counter() - started:.1f} s", flush=True)
    ctx = Context(args, config, model_dir, device, args.peak_tflops)

    if args.table:
        main_workloads = [uniform(64, 1024 if not args.tiny else 128), longtail(64, seq_len),
                          uniform(8, seq_len)]  # fmt: skip
    else:
        main_workloads = [longtail(args.batch, seq_len) if args.lengths == "longtail" else uniform(args.batch, seq_len)]
    for workload in main_workloads:
        lengths = workload.lengths
        print(f"{workload.name}: {workload.real_tokens} real tokens, mean {statistics.mean(lengths):.0f}, "
              f"{sum(n == workload.context for n in lengths)} at the context, padded grid "
              f"{1 - workload.real_tokens / (len(lengths) * max(lengths)):.0%} padding", flush=True)  # fmt: skip

    result: dict[str, Any] = {
        "model": "tiny" if args.tiny else "qwen2.5-1.5b-shape (random weights)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
        "workloads": {w.name: {"lengths": w.lengths, "prompt_lengths": w.prompt_lengths} for w in main_workloads},
        "rows": [],
    }

    def save() -> None:
        if args.out:
            tmp = f"{args.out}.tmp"
            with open(tmp, "w") as handle:
                json.dump(result, handle, indent=2)
            os.replace(tmp, args.out)

    def guarded(label: str, workload: Workload, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            result["rows"].append(fn())
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the table
            traceback.print_exc()
            result["rows"].append({"impl": label, "workload": workload.name, "error": f"{type(exc).__name__}: {exc}"})
        save()

    options = trainer_options(args, scale)
    label = "rlx" if args.max_tokens else "rlx-rows"
    trainer = build_trainer(ctx, seq_len, **options)
    try:
        for workload in main_workloads:
            guarded(label, workload, lambda w=workload: rlx_row(ctx, trainer, w, label) | {"config": options})
        if args.profile:
            result["profile"] = profile_calls(ctx, trainer, main_workloads[-1])
            save()
        hf_model = None
        if args.anchor == "hf" and device.type == "cuda":  # for the exactness check below
            from transformers import AutoModelForCausalLM

            hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
        if args.max_tokens:
            try:
                result["exactness"] = exactness(ctx, trainer, hf_model, main_workloads[-1])
                print(f"exactness: {result['exactness']}", flush=True)
            except Exception as exc:  # noqa: BLE001
                result["exactness"] = {"error": f"{type(exc).__name__}: {exc}"}
            save()
    finally:
        trainer.close()

    if args.anchor == "hf":
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if hf_model is None:
            hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
            hf_model.to(device)
        hf_model.train()
        optimizer = torch.optim.AdamW(hf_model.parameters(), lr=1e-6, fused=device.type == "cuda")
        for workload in main_workloads:
            guarded("hf", workload, lambda w=workload: hf_anchor_row(ctx, hf_model, optimizer, w))
        del hf_model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for variant in args.variant:
        overrides = dict(item.split("=", 1) for item in variant.split(","))
        variant_options = {**options, **{k: json.loads(v) if v[:1] in "-0123456789tfn[" else v
                                         for k, v in overrides.items()}}  # fmt: skip
        workload = longtail(args.batch, seq_len)
        try:
            trainer = build_trainer(ctx, seq_len, **variant_options)
        except Exception as exc:  # noqa: BLE001
            result["rows"].append({"impl": f"rlx {variant}", "workload": workload.name, "error": repr(exc)})
            continue
        try:
            label = f"rlx {variant}"
            guarded(label, workload, functools.partial(variant_row, ctx, trainer, workload, label, variant_options))
        finally:
            trainer.close()

    if args.table and args.memory_contexts:
        longest = max(args.memory_contexts)
        budget = longest if not args.tiny else round(longest * scale)
        for checkpointing, label in ((True, "rlx-ac"), ("selective", "rlx-sac")):  # full and selective
            memory_options = {**options, "max_tokens_per_micro_batch": budget,
                              "logprob_max_tokens_per_micro_batch": 4 * budget,
                              "activation_checkpointing": checkpointing}  # fmt: skip
            trainer = build_trainer(ctx, budget, **memory_options)
            try:
                for context in args.memory_contexts:
                    workload = uniform(4, context if not args.tiny else round(context * scale))
                    row = functools.partial(rlx_row, ctx, trainer, workload, label)
                    guarded(label, workload, lambda row=row, mo=memory_options: row() | {"config": mo})
            finally:
                trainer.close()

    if args.attention_bench and device.type == "cuda":
        result["attention_bench"] = attention_bench(ctx, longtail(64, FULL_CONTEXT), args.max_tokens or 16384)
        save()

    print_table(result)
    save()
    if args.out:
        print(f"results written to {args.out}")
    if args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
