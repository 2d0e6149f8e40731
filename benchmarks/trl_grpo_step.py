"""TRL's GRPOTrainer with vLLM colocated (sleep mode), one GRPO round after another on one GPU: the reference for
`benchmarks/grpo_step.py`'s uniform step (same random Qwen2.5-1.5B-shaped model, prompts and batch), to be run in
the same device call. TRL is benchmark-only: run this with a python that has trl, datasets and rlx importable.

    # one GPU, the uniform step of docs/benchmarks.md: 16 prompts x 8 samples x 512 tokens, 5 rounds
    python benchmarks/trl_grpo_step.py --rounds 5 --out trl_grpo_step.json
    # CPU smoke test: the tiny model, TRL's transformers generation (colocated vLLM needs a GPU)
    python benchmarks/trl_grpo_step.py --tiny --device cpu --no-vllm --new-tokens 16 --rounds 3

One round = one TRL optimizer step = one generation of prompts x samples completions: per_device_train_batch_size
= --micro-batch (16), gradient_accumulation_steps = steps_per_generation = prompts x samples / micro-batch (8), as
TRL's default steps_per_generation (= gradient_accumulation_steps) gives and as grpo_step.py's one optimizer step
per GRPO step with trainer.micro_batch_size=16. Every completion runs to --new-tokens (vLLM `ignore_eos`, or
`min_new_tokens` in transformers generation): grpo_step.py relies on a random model almost never sampling EOS.
Otherwise TRL's defaults: beta 0, the vLLM importance-sampling correction (so an old-logprob pass, like rlx's
pi_old), weights in the checkpoint's dtype (bf16; rlx keeps fp32 masters: `--model-dtype float32` for that), bf16
autocast; gradient checkpointing off (TRL's default is on; rlx's step has it off). Rewards are seeded coin flips.

With vLLM the process sets RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR and a free MASTER_PORT where they are
unset, so a plain `python` is the same as `torchrun --nproc-per-node 1` (which also works). Round k's wall time runs from the
end of optimizer step k-1 (training start for k=1) to the end of step k: weight sync into vLLM, wake, generation,
sleep, reward, old log-probs, 8 micro-batches of forward + backward, the optimizer step, TRL's logging. Prints a
table per round and the median of the rounds after --warmup-rounds; writes JSON.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpo_step import RandomRewardEnv, build_model, steady_median, step_table, write_json
from rich.console import Console

PHASES = ["time/weight_sync", "time/generate", "time/score_logprobs", "time/train"]


def distributed_env(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The single-process torch.distributed variables that torchrun would set and `environ` lacks (TRL's colocated
    vLLM runs with distributed_executor_backend="external_launcher", which needs them)."""
    wanted = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    missing = {k: v for k, v in wanted.items() if k not in environ}
    if "MASTER_PORT" not in environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            missing["MASTER_PORT"] = str(s.getsockname()[1])
    return missing


def batch_layout(prompts: int, generations: int, micro_batch: int) -> dict[str, int]:
    """GRPOConfig batch fields for one generation of prompts x generations completions per optimizer step, in
    micro-batches of `micro_batch` sequences (one process)."""
    total = prompts * generations
    if micro_batch <= 0 or total % micro_batch:
        raise ValueError(f"--micro-batch {micro_batch} must divide prompts x samples = {total}")
    steps = total // micro_batch
    return {"per_device_train_batch_size": micro_batch, "gradient_accumulation_steps": steps,
            "steps_per_generation": steps, "num_generations": generations}


def round_row(wall: float, phases: dict[str, float], lengths: list[int]) -> dict[str, float]:
    """One round's metrics: the wrapped phases (generate includes weight sync in TRL: split here), the rest of the
    round as train, completion tokens and their rate."""
    sync = phases.get("sync", 0.0)
    generate = phases.get("generate", 0.0)
    prepare = phases.get("generate_and_score", 0.0)
    tokens = float(sum(lengths))
    return {"time/weight_sync": sync, "time/generate": generate - sync, "time/score_logprobs": prepare - generate,
            "time/train": wall - prepare, "wall/round": wall, "completion_tokens": tokens,
            "completion_tokens_per_s": tokens / wall, "length/median": float(statistics.median(lengths or [0])),
            "length/max": float(max(lengths or [0]))}


class RoundTimer:
    """Times TRL's phases by wrapping the trainer's bound methods (TRL 1.16 names; a missing one is skipped) and
    closes a round at each optimizer step's end."""

    def __init__(self, synchronize: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self.synchronize = synchronize
        self.clock = clock
        self.phases: dict[str, float] = {}
        self.lengths: list[int] = []
        self.rows: list[dict[str, float]] = []
        self.logs: list[dict[str, Any]] = []
        self.mark = 0.0

    def wrap(self, owner: Any, method: str, phase: str, on_result: Callable[[Any], None] | None = None) -> bool:
        inner = getattr(owner, method, None)
        if inner is None:
            return False

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.synchronize()
            t = self.clock()
            result = inner(*args, **kwargs)
            self.synchronize()
            self.phases[phase] = self.phases.get(phase, 0.0) + self.clock() - t
            if on_result is not None:
                on_result(result)
            return result

        setattr(owner, method, timed)
        return True

    def count_completions(self, result: Any) -> None:
        """`_generate_single_turn` returns (completion_ids, logprobs): one token list per completion."""
        self.lengths.extend(len(ids) for ids in result[0])

    def start(self) -> None:
        self.synchronize()
        self.mark = self.clock()

    def end_round(self) -> dict[str, float]:
        self.synchronize()
        now = self.clock()
        row = round_row(now - self.mark, self.phases, self.lengths)
        self.rows.append(row)
        self.phases, self.lengths, self.mark = {}, [], now
        return row


def build_config(args: argparse.Namespace, work: Path) -> Any:
    import torch
    from trl import GRPOConfig

    on_gpu = args.device != "cpu"
    if args.use_vllm:
        generation = {"ignore_eos": True}  # passed to vLLM's SamplingParams
    else:
        generation = {"min_new_tokens": args.new_tokens}  # passed to transformers' GenerationConfig
    model_init = {} if args.model_dtype == "auto" else {"dtype": getattr(torch, args.model_dtype)}
    return GRPOConfig(
        output_dir=str(work / "trl-out"),
        use_cpu=not on_gpu,
        bf16=on_gpu,
        fp16=False,
        seed=0,
        max_steps=args.rounds,
        **batch_layout(args.prompts, args.generations, args.micro_batch),
        max_completion_length=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        generation_kwargs=generation,
        learning_rate=1e-6,  # grpo_step.py's trainer.lr
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.0,
        num_iterations=1,
        mask_truncated_completions=False,  # every completion is cut at the cap: keep them all in the loss
        gradient_checkpointing=args.gradient_checkpointing,
        model_init_kwargs=model_init,
        use_vllm=args.use_vllm,
        vllm_mode="colocate",
        vllm_enable_sleep_mode=args.use_vllm and args.sleep,
        vllm_gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_max_model_length=args.new_tokens + 4 * args.prompt_chars,  # grpo_step.py's model.max_seq_len
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )


def run_rounds(args: argparse.Namespace, model_path: str, work: Path, console: Console) -> dict[str, Any]:
    """Build TRL's GRPOTrainer on the model folder and train args.rounds optimizer steps (= rounds)."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    config = build_config(args, work)
    # grpo_step.py's prompts: the same environment and seed; TRL applies the same chat template to the messages
    env = RandomRewardEnv(max(args.prompts * (args.rounds + 1), 64), args.prompt_chars, seed=0)
    dataset = Dataset.from_list([{"prompt": list(p.messages)} for p in env.problems("train")])
    rng = random.Random(1)

    def coin_flip_reward(completions: list[Any], **_: Any) -> list[float]:
        return [float(rng.random() < 0.5) for _ in completions]

    synchronize = torch.cuda.synchronize if args.device != "cpu" and torch.cuda.is_available() else (lambda: None)
    timer = RoundTimer(synchronize)

    class Rounds(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):  # noqa: ANN001, ANN201
            timer.start()

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001, ANN201
            row = timer.end_round()
            console.print(f"round {state.global_step}: {row['wall/round']:.2f}s, {row['completion_tokens']:.0f} tokens")

        def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            if logs:
                timer.logs.append({"step": state.global_step, **logs})

    t = time.perf_counter()
    trainer = GRPOTrainer(model=model_path, reward_funcs=[coin_flip_reward], args=config, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[Rounds()])
    build_s = time.perf_counter() - t
    wrapped = [timer.wrap(trainer, "_generate_and_score_completions", "generate_and_score"),
               timer.wrap(trainer, "_generate_single_turn", "generate", timer.count_completions)]
    if args.use_vllm:
        wrapped.append(timer.wrap(trainer.vllm_generation, "sync_weights", "sync"))
    if not all(wrapped):
        console.print("[yellow]this TRL lacks a method the phase split wraps: phases and token counts incomplete")
    trainer.train()
    meta = {"trl_version": trl.__version__, "transformers_version": transformers.__version__,
            "torch_version": torch.__version__, "build_s": build_s,
            "trl_config": {k: getattr(config, k) for k in (
                "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
                "generation_batch_size", "num_generations", "max_completion_length", "generation_kwargs", "beta",
                "loss_type", "use_vllm", "vllm_mode", "vllm_enable_sleep_mode", "vllm_gpu_memory_utilization",
                "vllm_max_model_length", "vllm_importance_sampling_correction", "gradient_checkpointing", "bf16")}}
    if args.use_vllm:
        import vllm

        meta["vllm_version"] = vllm.__version__
    return {"meta": meta, "rounds": timer.rows, "trl_logs": timer.logs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU model instead of the 1.5B shape")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--rounds", type=int, default=5, help="GRPO rounds (optimizer steps), warm-up included")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="first rounds left out of the medians")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--generations", "--samples", dest="generations", type=int, default=8, help="samples per prompt")
    ap.add_argument("--new-tokens", type=int, default=512, help="every completion's length")
    ap.add_argument("--prompt-chars", type=int, default=None,
                    help="characters per prompt (default 600, about 290 tokens; 150 with --tiny), as grpo_step.py")
    ap.add_argument("--micro-batch", type=int, default=16, help="sequences per forward/backward (TRL's "
                    "per_device_train_batch_size)")
    ap.add_argument("--no-vllm", dest="use_vllm", action="store_false", help="TRL's transformers generation")
    ap.add_argument("--no-sleep", dest="sleep", action="store_false", help="vllm_enable_sleep_mode=False")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--model-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="dtype of the trained weights (auto: the checkpoint's, bf16)")
    ap.add_argument("--model", default=None, help="use this HF folder instead of building one")
    ap.add_argument("--out", default=None, help="write JSON here")
    args = ap.parse_args(argv)
    if args.prompt_chars is None:
        args.prompt_chars = 150 if args.tiny else 600
    if args.rounds <= args.warmup_rounds:
        ap.error(f"--rounds ({args.rounds}) must be more than --warmup-rounds ({args.warmup_rounds})")
    try:
        batch_layout(args.prompts, args.generations, args.micro_batch)
    except ValueError as e:
        ap.error(str(e))
    if args.use_vllm:  # (without vLLM on a CPU they would make accelerate wrap the model in DDP for nothing)
        os.environ.update(distributed_env(os.environ))

    console = Console(width=None if sys.stdout.isatty() else 160)
    work = Path(tempfile.mkdtemp(prefix="rlx-trl-bench-"))
    t = time.perf_counter()
    model_path = args.model or build_model(work / "model", args.tiny)
    console.print(f"model ready in {time.perf_counter() - t:.1f}s: {model_path}")
    result = run_rounds(args, model_path, work, console)
    rows = result["rounds"]
    median = steady_median(rows, args.warmup_rounds)
    steady = rows[args.warmup_rounds:]
    rate = sum(m["completion_tokens"] for m in steady) / sum(m["wall/round"] for m in steady)
    generator = "vLLM colocated" + (", sleep mode" if args.use_vllm and args.sleep else "") if args.use_vllm else "HF"
    shape = (f"{args.prompts}x{args.generations}x{args.new_tokens}, "
             f"{'tiny' if args.tiny else 'Qwen2.5-1.5B shape'}, {generator}")
    console.print(step_table(f"TRL {result['meta']['trl_version']} GRPOTrainer round: {shape}", rows, median,
                             args.warmup_rounds, PHASES, "wall/round"))
    console.print(f"rounds {args.warmup_rounds + 1}..{args.rounds}: median {median['wall/round']:.2f} s/round, "
                  f"{rate:.0f} completion tok/s (their tokens / their wall time); trainer start-up "
                  f"{result['meta']['build_s']:.1f}s")
    if args.out:
        write_json(Path(args.out), {"args": vars(args), **result, "median_steady": median,
                                    "completion_tokens_per_s_steady": rate})
    return 0


if __name__ == "__main__":
    sys.exit(main())
