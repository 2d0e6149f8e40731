"""Rewards per second of the `math` environment on realistic completions (long-ish chain of thought ending in a
boxed answer; right, wrong and unboxed mixed), for several numbers of verifier processes. Prints a table and
writes JSON.

    python benchmarks/reward_throughput.py --completions 1024 --workers 0 1 2

"repeated" batches reuse 10 problems' final answers (as GRPO does: the environment grades each distinct
(gold, final answer) once); "distinct" batches give every completion a new answer (the worst case).

    python benchmarks/reward_throughput.py --adversarial --completions 400 --workers 2 --timeout-s 2

`--adversarial` grades pathological final answers instead (`rlx_math.adversarial`: long symbolic sums, power
towers, deep nesting, huge numbers, control bytes, repetition loops, unevaluated calculus), once with the
fast paths off (every answer through math-verify, as before they existed) and once with them on, and reports
how many hit the time limit, the batch time, and that none was judged correct.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections import Counter

from rlx.interfaces import Problem

# (gold answer, equivalent forms a model may write, plausible wrong answers)
ANSWERS: list[tuple[str, list[str], list[str]]] = [
    ("204", ["204", "204 \\text{ minutes}"], ["240", "194"]),
    ("\\frac{1}{2}", ["\\frac{1}{2}", "0.5", "\\dfrac{1}{2}"], ["\\frac{1}{3}", "2"]),
    ("\\frac{\\sqrt{3}}{2}", ["\\frac{\\sqrt{3}}{2}", "\\frac{3}{2\\sqrt{3}}"], ["\\frac{\\sqrt{2}}{2}", "\\sqrt{3}"]),
    ("(1, 2]", ["(1,2]", "(1, 2]"], ["[1, 2]", "(1, 2)"]),
    ("\\{-2, 3\\}", ["\\{3, -2\\}", "-2, 3"], ["\\{2, -3\\}", "3"]),
    ("30^\\circ", ["30^\\circ", "30"], ["60^\\circ", "150"]),
    ("2\\sqrt{5}", ["2\\sqrt{5}", "\\sqrt{20}"], ["4\\sqrt{5}", "5\\sqrt{2}"]),
    ("x^2 + 2x + 1", ["(x+1)^2", "x^2+2x+1"], ["(x-1)^2", "x^2+1"]),
    ("1000", ["1000", "1{,}000"], ["100", "999"]),
    ("\\frac{7}{12}", ["\\frac{7}{12}", "\\dfrac{7}{12}"], ["\\frac{5}{12}", "0.58"]),
]

WORDS = "we note that the sum of both sides gives so then hence since it follows check again carefully".split()


def chain_of_thought(rng: random.Random, lines: int) -> str:
    """Reasoning-like text: prose with inline and display math, about 60-80 characters a line."""
    out = []
    for _ in range(lines):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        prose = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        math = rng.choice([f"${a} + {b} = {a + b}$", f"$\\frac{{{a}}}{{{b}}}$", f"$$x^{{{a % 5 + 2}}} - {b}x = 0$$"])
        out.append(f"{prose.capitalize()} {math}.")
    return "\n".join(out)


def random_answer(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """A fresh (gold, right forms, wrong forms) with random numbers, so no two completions share an answer."""
    a, b, k = rng.randint(2, 999), rng.randint(2, 999), rng.randint(2, 9)
    kind = rng.randrange(7)
    if kind == 0:
        return str(a * b), [str(a * b)], [str(a * b + k)]
    if kind == 1:
        return (
            f"\\frac{{{a}}}{{{b}}}",
            [f"\\dfrac{{{a}}}{{{b}}}", f"\\frac{{{k * a}}}{{{k * b}}}"],
            [f"\\frac{{{a + 1}}}{{{b}}}"],
        )
    if kind == 2:
        return f"{k}\\sqrt{{{a}}}", [f"\\sqrt{{{k * k * a}}}"], [f"{k + 1}\\sqrt{{{a}}}"]
    if kind == 3:
        lo, hi = sorted((a, b + 1000))
        return f"({lo}, {hi}]", [f"({lo},{hi}]"], [f"[{lo}, {hi}]"]
    if kind == 4:
        return f"\\{{{a}, {b + 1000}\\}}", [f"\\{{{b + 1000}, {a}\\}}"], [f"\\{{{a}, {b}\\}}"]
    if kind == 5:
        return f"x^2 + {2 * a}x + {a * a}", [f"(x+{a})^2"], [f"(x-{a})^2"]
    return f"{a % 180}^\\circ", [f"{a % 180}"], [f"{a % 180 + 10}^\\circ"]


def make_batch(
    n: int, seed: int, mean_lines: int, distinct: bool = False
) -> tuple[list[Problem], list[str], Counter[str]]:
    """n distinct completions: 50% right (varied forms), 40% wrong, 10% without a box.

    `distinct=False`: 10 problems' answers repeat across completions, as in a GRPO batch (the environment
    grades each distinct final answer once). `distinct=True`: every final answer is new (the worst case).
    """
    rng = random.Random(seed)
    problems, completions, kinds = [], [], Counter()
    for i in range(n):
        gold, right, wrong = random_answer(rng) if distinct else ANSWERS[i % len(ANSWERS)]
        kind = rng.choices(["right", "wrong", "nobox"], weights=[5, 4, 1])[0]
        body = f"<think>\n{chain_of_thought(rng, max(1, int(rng.gauss(mean_lines, mean_lines / 4))))}\n</think>\n\n"
        if kind == "nobox":
            ending = f"So the result is {rng.choice(wrong)}."
        else:
            answer = rng.choice(right if kind == "right" else wrong)
            ending = f"Therefore, the final answer is $\\boxed{{{answer}}}$."
        problems.append(Problem(f"bench-{i}", ({"role": "user", "content": "q"},), gold))
        completions.append(body + ending)
        kinds[kind] += 1
    return problems, completions, kinds


def run_adversarial(args: argparse.Namespace) -> list[dict]:
    """One batch of `args.completions` adversarial answers per (workers, fast paths off/on)."""
    from rlx_math.adversarial import adversarial_answers
    from rlx_math.env import MathEnvironment
    from rlx_math.plugin import MathEnvConfig

    triples = adversarial_answers(args.completions, seed=args.seed)
    problems = [
        Problem(f"adv-{i}", ({"role": "user", "content": "q"},), gold) for i, (_, gold, _) in enumerate(triples)
    ]
    completions = [completion for _, _, completion in triples]
    rows = []
    for workers in args.workers:
        for fast_paths in (False, True):
            config = MathEnvConfig(num_workers=workers, timeout_s=args.timeout_s, fast_paths=fast_paths)
            env = MathEnvironment(config, seed=0)
            try:
                env.score(problems[:2], ["\\boxed{1}", "\\boxed{2}"])  # start and warm up the workers
                start = time.perf_counter()
                scores = env.score(problems, completions)
                batch_s = time.perf_counter() - start
                stats = env.last_grading_stats
                limited = Counter(c for (c, _, _), s in zip(triples, scores, strict=True) if s.status == "timeout")
                rows.append(
                    {
                        "answers": "adversarial",
                        "workers": workers,
                        "fast_paths": fast_paths,
                        "completions": len(triples),
                        "batch_s": round(batch_s, 2),
                        "hit_time_limit": stats.timed_out,
                        "judged_correct": sum(s.status == "correct" for s in scores),
                        "decided_without_sympy": stats.fast,
                        "statuses": dict(Counter(s.status for s in scores)),
                        "paths": stats.by_path,
                        "hit_time_limit_by_category": dict(limited),
                        "pool_events": dict(env.pool.events),
                    }
                )
            finally:
                env.close()
    print(
        f"adversarial answers: {len(triples)} distinct (seed {args.seed}), time limit {args.timeout_s} s, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f})"
    )
    print(
        f"{'workers':>7} {'fast paths':>10} {'batch s':>8} {'hit limit':>9} {'correct':>7} {'no sympy':>8}  limit hits by kind"
    )
    for row in rows:
        print(
            f"{row['workers']:>7} {'on' if row['fast_paths'] else 'off':>10} {row['batch_s']:>8.1f} "
            f"{row['hit_time_limit']:>9} {row['judged_correct']:>7} {row['decided_without_sympy']:>8}  "
            f"{row['hit_time_limit_by_category']}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", type=int, default=1024, help="completions per measured batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="verifier processes (0 = inline)")
    parser.add_argument(
        "--answers",
        nargs="+",
        choices=["repeated", "distinct"],
        default=["repeated", "distinct"],
        help="repeated: final answers repeat across a batch as in GRPO; distinct: every answer is new",
    )
    parser.add_argument("--lines", type=int, default=40, help="mean chain-of-thought lines per completion")
    parser.add_argument("--repeats", type=int, default=3, help="measured batches per setting (best is reported)")
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--out", default=None, help="JSON results file (default: benchmarks/results/...)")
    parser.add_argument(
        "--adversarial", action="store_true", help="grade pathological answers, fast paths off then on (see above)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the adversarial answers")
    args = parser.parse_args()
    if args.adversarial:
        rows = run_adversarial(args)
        _write(args, rows, args.out or "benchmarks/results/reward_throughput_adversarial.json")
        return

    from rlx_math.env import MathEnvironment
    from rlx_math.plugin import MathEnvConfig

    rows = []
    for answers in args.answers:
        distinct = answers == "distinct"
        # a fresh batch per repeat: identical pairs would be graded once (and math-verify caches parses)
        batches = [
            make_batch(args.completions, seed=r + 1, mean_lines=args.lines, distinct=distinct)
            for r in range(args.repeats)
        ]
        warmup_problems, warmup_completions, _ = make_batch(8, seed=0, mean_lines=args.lines, distinct=distinct)
        mean_chars = sum(len(c) for _, cs, _ in batches for c in cs) / (args.completions * args.repeats)
        for workers in args.workers:
            env = MathEnvironment(MathEnvConfig(num_workers=workers, timeout_s=args.timeout_s), seed=0)
            try:
                start = time.perf_counter()
                env.score(warmup_problems, warmup_completions)  # starts and warms up the workers
                startup_s = time.perf_counter() - start
                times, cpu_times, statuses = [], [], Counter()
                for batch_p, batch_c, _ in batches:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    scores = env.score(batch_p, batch_c)
                    times.append(time.perf_counter() - start)
                    cpu_times.append(time.process_time() - cpu_start)
                    statuses.update(s.status for s in scores)
                best = min(times)
                rows.append(
                    {
                        "answers": answers,
                        "workers": workers,
                        "completions": args.completions,
                        "mean_chars": round(mean_chars),
                        "best_s": round(best, 3),
                        "median_s": round(sorted(times)[len(times) // 2], 3),
                        "rewards_per_s": round(args.completions / best, 1),
                        "startup_s": round(startup_s, 3),
                        # in-process grading only: CPU time per reward, which a busy machine does not inflate
                        "cpu_ms_per_reward": round(1000 * min(cpu_times) / args.completions, 2)
                        if workers == 0
                        else None,
                        "statuses": dict(statuses),
                    }
                )
            finally:
                env.close()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"reward throughput: {args.completions} completions/batch, {os.cpu_count()} CPUs "
        f"(load average {load:.1f}), best of {args.repeats}"
    )
    print(
        f"{'answers':>9} {'workers':>7} {'chars':>6} {'best s':>8} {'median s':>9} {'rewards/s':>10} "
        f"{'startup s':>10} {'cpu ms/reward':>14}  statuses (summed over repeats)"
    )
    for row in rows:
        print(
            f"{row['answers']:>9} {row['workers']:>7} {row['mean_chars']:>6} {row['best_s']:>8.3f} "
            f"{row['median_s']:>9.3f} {row['rewards_per_s']:>10.1f} {row['startup_s']:>10.3f} "
            f"{row['cpu_ms_per_reward'] if row['cpu_ms_per_reward'] is not None else '-':>14}  {row['statuses']}"
        )
    _write(args, rows, args.out or "benchmarks/results/reward_throughput.json")


def _write(args: argparse.Namespace, rows: list[dict], out: str) -> None:
    result = {
        "benchmark": "reward_throughput",
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "args": vars(args),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(out + ".tmp", out)  # never a half-written results file
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
