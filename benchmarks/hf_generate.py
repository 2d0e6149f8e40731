"""Throughput of the builtin `hf` generator (tokens/s) at several batch sizes, on whatever device is present.

    python benchmarks/hf_generate.py --tiny          # CPU: the embedded tiny model, 128 x 16 new tokens
    python benchmarks/hf_generate.py                 # GPU: random Qwen2.5-1.5B-shaped model, 128 x 512

Random weights almost never sample EOS, so every sequence runs to max_new_tokens. Prints a table and writes
JSON (--out). Times include everything `generate` does (padding, sampling, logprobs, Python overhead).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from rlx.builtin.configs import HFGeneratorConfig
from rlx.builtin.hf_generator import HFGenerator
from rlx.interfaces import ModelSpec, SamplingParams

# Qwen2.5-1.5B's shapes (DeepSeek-R1-Distill-Qwen-1.5B has the same, untied head).
QWEN25_1P5B = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}


def build_qwen_shaped(out_dir: Path, device: torch.device) -> str:
    """A random-weight Qwen2.5-1.5B-shaped model, initialised on `device` in bf16 and saved (no tokenizer)."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    shape = dict(QWEN25_1P5B)
    rope = {"rope_type": "default", "rope_theta": shape.pop("rope_theta")}
    config = Qwen2Config(**shape, rope_parameters=rope, eos_token_id=151645, pad_token_id=151643, bos_token_id=151643)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=151645, pad_token_id=151643)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return str(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny model (CPU-sized)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-sequences", type=int, default=None, help="default: 128")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 16 (--tiny) or 512")
    parser.add_argument("--prompt-len", type=int, default=None, help="default: chat prompts (--tiny) or 256")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 32,64,128")
    parser.add_argument("--cache-implementation", default=None, help="HFGeneratorConfig.cache_implementation")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (median reported)")
    parser.add_argument("--out", default="benchmarks/results/hf_generate.json")
    args = parser.parse_args()

    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    num_sequences = args.num_sequences or 128
    max_new_tokens = args.max_new_tokens or (16 if args.tiny else 512)
    batch_sizes = [int(b) for b in (args.batch_sizes or "32,64,128").split(",")]
    num_prompts = max(1, num_sequences // args.n)

    with tempfile.TemporaryDirectory(prefix="rlx-bench-") as tmp:
        if args.tiny:
            from transformers import AutoTokenizer

            from rlx.models.tiny import tiny_model

            path = tiny_model(Path(tmp) / "tiny")
            tokenizer = AutoTokenizer.from_pretrained(path)
            if args.prompt_len:
                prompts = [[1 + (7 * i + j) % 300 for j in range(args.prompt_len)] for i in range(num_prompts)]
            else:
                prompts = [
                    list(
                        tokenizer.apply_chat_template(
                            [{"role": "user", "content": f"What is {i} + {3 * i % 17}? Put it in \\boxed{{}}."}],
                            add_generation_prompt=True,
                            tokenize=True,
                            return_dict=True,
                        )["input_ids"]
                    )
                    for i in range(num_prompts)
                ]
            model_name = "tiny (hidden 128, 2 layers)"
        else:
            path = build_qwen_shaped(Path(tmp) / "qwen", device)
            gen = torch.Generator().manual_seed(0)
            length = args.prompt_len or 256
            prompts = torch.randint(0, 151000, (num_prompts, length), generator=gen).tolist()
            model_name = "Qwen2.5-1.5B-shaped (random)"

        rows = []
        for batch_size in batch_sizes:
            generator = HFGenerator(
                HFGeneratorConfig(
                    batch_size=batch_size, device=str(device), cache_implementation=args.cache_implementation
                ),
                model=ModelSpec(path),
                seed=0,
            )
            generator.generate(prompts[:1], SamplingParams(n=min(args.n, batch_size), max_new_tokens=4))  # warm-up
            times, tokens = [], 0
            for repeat in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = generator.generate(prompts, SamplingParams(n=args.n, max_new_tokens=max_new_tokens, seed=repeat))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                tokens = sum(len(c.token_ids) for per_prompt in out for c in per_prompt)
            seconds = sorted(times)[len(times) // 2]
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            rows.append(
                {
                    "batch_size": batch_size,
                    "sequences": num_prompts * args.n,
                    "new_tokens": tokens,
                    "seconds": round(seconds, 4),
                    "tokens_per_s": round(tokens / seconds, 1),
                    "peak_gpu_gib": round(peak, 2) if peak is not None else None,
                }
            )
            generator.close()
            del generator
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"hf generator | {model_name} | {device_name} | prompt {len(prompts[0])} tok | n={args.n} | max_new_tokens={max_new_tokens}"
    )
    print(f"{'batch':>6} {'seqs':>5} {'new tokens':>10} {'seconds':>8} {'tokens/s':>10} {'peak GiB':>8}")
    for r in rows:
        peak = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else "-"
        print(
            f"{r['batch_size']:>6} {r['sequences']:>5} {r['new_tokens']:>10} {r['seconds']:>8.3f} {r['tokens_per_s']:>10.1f} {peak:>8}"
        )
    result = {
        "benchmark": "hf_generate",
        "model": model_name,
        "device": device_name,
        "torch": torch.__version__,
        "threads": HFGeneratorConfig().cpu_threads if device.type == "cpu" else None,
        "prompt_len": len(prompts[0]),
        "n": args.n,
        "max_new_tokens": max_new_tokens,
        "repeats": args.repeats,
        "cache_implementation": args.cache_implementation,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
