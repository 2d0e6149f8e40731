"""Nothing a user wrote is lost: every folder rlx writes (exports, eval results, run folders) carries a marker,
anything else is refused (exit 2, files untouched) unless --overwrite, and a replace is atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlx.errors import ConfigError
from rlx.outputs import (
    MARKER,
    check_replaceable,
    link_folder,
    mark,
    output_kind,
    recover,
    writing_folder,
    written_by_rlx,
)

from .conftest import REPO


def _rlx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlx.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return _snapshot(path)


def _snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ the helper


def test_writing_folder_replaces_an_rlx_output_whole(tmp_path):
    dest = tmp_path / "out"
    with writing_folder(dest, kind="hf-export", what="dest") as staging:
        staging.mkdir()
        (staging / "a.txt").write_text("first")
    assert output_kind(dest) == "hf-export" and (dest / "a.txt").read_text() == "first"
    with writing_folder(dest, kind="hf-export", what="dest") as staging:
        staging.mkdir()
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "b.txt"]  # the old folder's files are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or set-aside folder left


def test_writing_folder_refuses_a_user_folder_before_any_work(tmp_path):
    dest = tmp_path / "mine"
    before = _user_folder(dest)
    with pytest.raises(ConfigError) as info, writing_folder(dest, kind="hf-export", what="export destination"):
        pytest.fail("the body must not run")
    assert str(info.value) == (
        f"export destination '{dest}' exists and is a folder rlx did not write (it holds notes.txt, sub; no "
        f"{MARKER} marker); rlx will not replace it. Choose another destination, or pass --overwrite to replace it "
        "(the new folder is written first, the old one removed after)"
    )
    assert _snapshot(dest) == before


def test_a_file_is_refused_and_overwrite_replaces_it(tmp_path):
    dest = tmp_path / "model"
    dest.write_text("precious")
    with pytest.raises(ConfigError, match=r"exists and is a file; rlx will not replace it"):
        check_replaceable(dest, kind="hf-export", what="export destination")
    assert dest.read_text() == "precious"
    with writing_folder(dest, kind="hf-export", what="d", overwrite=True) as staging:
        staging.mkdir()
        (staging / "config.json").write_text("{}")
    assert dest.is_dir() and written_by_rlx(dest, "hf-export")


def test_an_output_of_another_kind_is_not_replaced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mark(run, "run")
    with pytest.raises(ConfigError, match="is an rlx run folder, not a Hugging Face export by rlx"):
        check_replaceable(run, kind="hf-export", what="export destination")


def test_empty_folder_and_dangling_link_are_replaceable(tmp_path):
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", kind="eval", what="--out")
    (tmp_path / "dangling").symlink_to("nowhere")
    check_replaceable(tmp_path / "dangling", kind="eval", what="--out")


def test_a_failed_write_leaves_the_old_output_untouched(tmp_path):
    dest = tmp_path / "out"
    with writing_folder(dest, kind="eval", what="d") as staging:
        staging.mkdir()
        (staging / "result.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), writing_folder(dest, kind="eval", what="d") as staging:
        staging.mkdir()
        (staging / "result.json").write_text("half")
        raise RuntimeError("disk full")
    assert (dest / "result.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recover_puts_back_a_folder_set_aside_by_a_killed_swap(tmp_path):
    """A kill between the two renames of a swap leaves the old folder set aside and nothing at the destination:
    the next write puts it back first (and drops the half-written staging folder)."""
    dest = tmp_path / "hf"
    aside = tmp_path / ".hf.rlx-aside-1234abcd"
    aside.mkdir()
    (aside / "model.safetensors").write_text("weights")
    (tmp_path / ".hf.rlx-staging-99").mkdir()
    recover(dest)
    assert (dest / "model.safetensors").read_text() == "weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_link_folder_replaces_a_folder_with_a_link(tmp_path):
    (tmp_path / "hf").mkdir()
    mark(tmp_path / "hf", "hf-export")
    (tmp_path / "best-hf").mkdir()
    mark(tmp_path / "best-hf", "hf-export")
    link_folder("hf", tmp_path / "best-hf", kind="hf-export", what="export folder")
    assert (tmp_path / "best-hf").is_symlink() and os.readlink(tmp_path / "best-hf") == "hf"


def test_marker_records_kind_and_version(tmp_path):
    mark(tmp_path, "eval")
    record = json.loads((tmp_path / MARKER).read_text())
    assert record["kind"] == "eval" and record["rlx_version"]


# ------------------------------------------------------------------------------------------------ through the CLI


def test_export_refuses_a_user_folder_and_leaves_it_untouched(tmp_path):
    dest = tmp_path / "notes"
    before = _user_folder(dest)
    out = _rlx("export", str(tmp_path / "no-such-run"), str(dest))
    assert out.returncode == 2, out.stderr
    assert f"export destination '{dest}' exists and is a folder rlx did not write" in _flat(out.stderr)
    assert "--overwrite" in out.stderr and "Traceback" not in out.stderr
    assert _snapshot(dest) == before


def test_export_refuses_an_existing_file(tmp_path):
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"\x00precious")
    out = _rlx("export", str(tmp_path / "no-such-run"), str(dest))
    assert out.returncode == 2 and "exists and is a file" in _flat(out.stderr)
    assert dest.read_bytes() == b"\x00precious"


def test_eval_refuses_a_user_folder_before_loading_anything(tmp_path):
    dest = tmp_path / "eval"
    before = _user_folder(dest)
    out = _rlx("eval", "--model", "builtin:tiny", "-o", str(dest))
    assert out.returncode == 2 and f"--out '{dest}' exists and is a folder rlx did not write" in _flat(out.stderr)
    assert _snapshot(dest) == before


def test_run_refuses_an_output_dir_holding_user_files(tmp_path):
    dest = tmp_path / "Documents"
    before = _user_folder(dest)
    out = _rlx("run", f"output_dir={dest}", "steps=1")
    assert out.returncode == 2, out.stderr
    assert (f"output_dir '{dest}' is a folder that rlx did not write (it holds notes.txt, sub)" in _flat(out.stderr))
    assert _snapshot(dest) == before


def test_run_refuses_when_its_export_folder_is_a_user_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mark(run, "run")
    before = _user_folder(run / "hf")
    out = _rlx("run", f"output_dir={run}", "steps=1")
    assert out.returncode == 2
    assert f"export folder '{run / 'hf'}' exists and is a folder rlx did not write" in _flat(out.stderr)
    assert "move it out of the run folder" in _flat(out.stderr)
    assert _snapshot(run / "hf") == before


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "runs"
    target.write_text("not a folder")
    out = _rlx("run", f"output_dir={target / 'x'}", "steps=1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"'{target}' exists and is a file, not a folder" in _flat(out.stderr)
    assert target.read_text() == "not a folder"


def test_fsdp_trainer_export_hf_never_replaces_a_user_folder(tmp_path):
    """The trainer's own export (called directly, outside `rlx run`) follows the same rule, and replaces its own
    earlier export whole."""
    from rlx.builtin.configs import FSDPTrainerConfig
    from rlx.builtin.fsdp_trainer import FSDPTrainer
    from rlx.interfaces import ModelSpec
    from rlx.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    trainer = FSDPTrainer(FSDPTrainerConfig(device="cpu"), model=ModelSpec(model), seed=0, with_reference=False)
    try:
        mine = tmp_path / "mine"
        before = _user_folder(mine)
        with pytest.raises(ConfigError, match="export_hf path .* exists and is a folder rlx did not write"):
            trainer.export_hf(str(mine))
        assert _snapshot(mine) == before
        trainer.export_hf(str(tmp_path / "hf"))
        (tmp_path / "hf" / "stale.txt").write_text("from the first export")
        trainer.export_hf(str(tmp_path / "hf"))
    finally:
        trainer.close()
    assert output_kind(tmp_path / "hf") == "hf-export" and not (tmp_path / "hf" / "stale.txt").exists()
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine", "model"]
