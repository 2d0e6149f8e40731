"""The command line as a user meets it: clear errors (exit 2, no traceback), dry runs, config show."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO


def _rlx(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlx.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=300)


def test_unknown_generator_names_available_ones():
    out = _rlx("run", "--generator", "nope")
    assert out.returncode == 2
    assert "unknown generator 'nope'" in out.stderr and "hf" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_unknown_config_key_is_named():
    out = _rlx("run", "--dry-run", "grpo.num_generationz=3")
    assert out.returncode == 2 and "grpo.num_generationz" in out.stderr and "Traceback" not in out.stderr


def test_unknown_component_option_is_named():
    out = _rlx("run", "--dry-run", "trainer.learning_rate=3")
    assert out.returncode == 2 and "trainer.learning_rate" in out.stderr and "lr" in out.stderr


def test_missing_recipe_file():
    out = _rlx("run", "--config", "recipes/nope.yaml")
    assert out.returncode == 2 and "recipes/nope.yaml" in out.stderr


def test_config_show_prints_resolved_component_options():
    out = _rlx("config", "show", "trainer.lr=2e-6")
    assert out.returncode == 0, out.stderr
    assert "lr: 2.0e-06" in out.stdout and "micro_batch_size" in out.stdout  # component defaults filled in


def test_help_lists_commands():
    out = _rlx("--help")
    for command in ("run", "plugins", "config", "eval", "export"):
        assert command in out.stdout


def test_eval_writes_results_and_per_problem_file(tmp_path):
    out = tmp_path / "eval"
    proc = _rlx("eval", "--model", "builtin:tiny", "-k", "4", "--max-problems", "8", "--max-new-tokens", "12",
                "--temperature", "1.0", "--top-p", "1.0", "-o", str(out), "env.num_workers=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    result = json.loads((out / "result.json").read_text())
    assert result["num_problems"] == 8 and result["samples"] == 4
    assert 0 <= result["pass@1"] <= result["pass@2"] <= result["pass@4"] <= 1 and result["accuracy"] == result["avg@4"]
    rows = [json.loads(line) for line in (out / "per_problem.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["completions"]) == 4 and len(r["rewards"]) == 4 for r in rows)
    assert result["accuracy"] == sum(r["num_correct"] for r in rows) / 32


def test_eval_rejects_bad_split():
    out = _rlx("eval", "--model", "builtin:tiny", "--split", "test")
    assert out.returncode == 2 and "--split" in out.stderr and "Traceback" not in out.stderr


def test_error_text_in_square_brackets_is_printed_as_is():
    """Messages quote user input and install commands (pip install 'rlx-sglang[engine]'): not rich markup."""
    out = _rlx("run", "--dry-run", "grpo.num_generations=x[engine]")
    assert out.returncode == 2 and "x[engine]" in out.stderr, out.stderr


def test_misspelt_policy_loss_fails_in_one_line_naming_gspo():
    out = _rlx("run", "--dry-run", "grpo.policy_loss=gsp", COLUMNS="200")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "grpo.policy_loss" in lines[0] and "Did you mean 'gspo'" in lines[0], out.stderr
