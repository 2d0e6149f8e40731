"""What a person reads in a run folder: rollouts.jsonl (a few completions per step, as text, with their scores),
metrics.jsonl surviving a kill mid-write, and `rlx plot`'s PNG of the headline curves."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlx.errors import ConfigError
from rlx.interfaces import Completion, Problem, Score
from rlx.metrics import RolloutLog, read_metrics, truncate_steps
from rlx.plot import plot_run, rolling_mean
from rlx.rollout import Sample

from .conftest import REPO


def _group(pid: str, texts_rewards: list[tuple[str, float, str]]) -> list[Sample]:
    problem = Problem(pid, ({"role": "user", "content": "2+2="},), "4")
    return [
        Sample.single_turn(problem, [7, 8], Completion(tuple(range(n + 1)), (-0.1,) * (n + 1), "stop" if n else "length"),
                           text, Score(reward, status))
        for n, (text, reward, status) in enumerate(texts_rewards)
    ]


def test_rollout_log_writes_the_first_groups_of_each_step(tmp_path):
    log = RolloutLog(tmp_path / "rollouts.jsonl", 1, decode_prompt=lambda ids: f"<prompt {list(ids)}>")
    groups = [_group("a", [("\\boxed{4}", 1.0, "correct"), ("5", 0.0, "wrong")]), _group("b", [("x", 0.0, "wrong")])]
    log.write(3, groups)
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert rows == [
        {"step": 3, "prompt_id": "a", "group": 0, "prompt": "<prompt [7, 8]>", "completion": "\\boxed{4}",
         "reward": 1.0, "status": "correct", "correct": True, "length": 1, "finish_reason": "length"},
        {"step": 3, "prompt_id": "a", "group": 0, "prompt": "<prompt [7, 8]>", "completion": "5",
         "reward": 0.0, "status": "wrong", "correct": False, "length": 2, "finish_reason": "stop"},
    ]
    off = RolloutLog(tmp_path / "off.jsonl", 0, decode_prompt=str)
    off.write(1, groups)
    assert not (tmp_path / "off.jsonl").exists()


def test_truncate_drops_later_steps_and_a_partial_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a": 3.0}\n{"step": 4, "a"')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]  # a run killed mid-write still reads
    truncate_steps(path, 2)
    assert path.read_text() == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n'


def test_rolling_mean():
    assert rolling_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def _metrics(tmp_path, steps: int = 30):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 0, "val/accuracy": 0.1, "val/pass@4": 0.3}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "reward/mean": s / steps, "reward/solved_frac": s / steps,
                     "response_length/mean": 10 + s, "response_length/max": 20 + s,
                     "response_length/truncated_frac": 0.1, "train/clip_frac": 0.01, "train/clip_frac_low": 0.005,
                     "train/clip_frac_high": 0.005, "logprob_mismatch": 1.0 + 1e-3, "time/generate": 1.0,
                     "time/train": 2.0, "time/weight_sync": 0.2, "time/step": 3.2})
        if s % 10 == 0:
            rows.append({"step": s, "val/accuracy": 0.1 + s / 100, "val/pass@4": 0.3 + s / 100})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_plot_writes_a_png_beside_the_metrics(tmp_path):
    pytest.importorskip("matplotlib", reason="rlx[plot] extra not installed (scripts/dev.sh test installs it)")
    run = _metrics(tmp_path)
    png = plot_run(run)
    assert png == run / "metrics.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "metrics.png"]  # no temporary file left


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ConfigError, match=r"rlx plot needs matplotlib.*pip install 'rlx\[plot\]'"):
        plot_run(_metrics(tmp_path))


def test_plot_cli_on_a_folder_without_metrics(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlx.cli", "plot", str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"'{tmp_path}' has no metrics.jsonl: give the output_dir of an rlx run" in " ".join(proc.stderr.split())
