"""Bad input a user can act on gets one message saying what was wrong, where, and what is allowed: exit code 2
through the CLI, no traceback. Ctrl-C says where the run stopped and how to go on (exit 130)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlx.config import build_config, load_yaml
from rlx.errors import ConfigError

from .conftest import REPO


def _rlx(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlx.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _assert_one_message(proc: subprocess.CompletedProcess, *parts: str) -> None:
    err = _flat(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and err.count("error:") == 1, proc.stderr[-2000:]
    for part in parts:
        assert part in err, (part, err)


# ------------------------------------------------------------------------------------------------ config files


def test_empty_recipe_is_an_error(tmp_path):
    (tmp_path / "empty.yaml").write_text("# just a comment\n")
    with pytest.raises(ConfigError, match=r"empty.yaml is empty: a recipe is a mapping of settings"):
        load_yaml(tmp_path / "empty.yaml")
    _assert_one_message(_rlx("run", "--dry-run", "--config", str(tmp_path / "empty.yaml")),
                        f"{tmp_path / 'empty.yaml'} is empty")


@pytest.mark.parametrize(("text", "shown"), [("- steps: 3\n", "list ([{'steps': 3}])"), ("steps\n", "str ('steps')")])
def test_recipe_that_is_not_a_mapping(tmp_path, text, shown):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path / "r.yaml")
    assert str(info.value) == (f"{tmp_path / 'r.yaml'}: a recipe must be a mapping of settings (key: value lines), "
                               f"but the file holds a {shown}")


def test_defaults_that_are_not_paths(tmp_path):
    (tmp_path / "r.yaml").write_text("defaults: {a: 1}\n")
    with pytest.raises(ConfigError, match=r"`defaults` must be a recipe path or a list of them"):
        load_yaml(tmp_path / "r.yaml")


def test_choosing_an_env_over_the_embedded_default_recipe_does_not_warn(caplog):
    """`rlx run --env X` (no --config) means X with its own defaults: the embedded recipe's math options are not the
    user's, so dropping them is not news. Over a recipe the user names, it still warns."""
    recipe = REPO / "recipes" / "tiny-cpu.yaml"
    with caplog.at_level("WARNING", logger="rlx.config"):
        cfg = build_config(recipe, env="echo-like", warn_dropped=False)
    assert cfg.env.name == "echo-like" and cfg.env.options() == {} and caplog.text == ""
    with caplog.at_level("WARNING", logger="rlx.config"):
        build_config(recipe, env="echo-like")
    assert "--env echo-like replaces the recipe's env 'math'" in caplog.text


def test_cli_env_choice_prints_no_warning():
    out = _rlx("run", "--env", "math", "--dry-run")
    assert out.returncode == 0 and "WARNING" not in out.stderr + out.stdout, out.stderr


# ------------------------------------------------------------------------------------------------ models and data


def test_eval_on_a_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("x")
    _assert_one_message(
        _rlx("eval", "--model", str(folder), "-o", str(tmp_path / "eval")),
        f"model.path '{folder}' is not a Hugging Face model folder: it has no config.json (it holds todo.txt)",
    )
    assert not (tmp_path / "eval").exists()


def test_eval_on_a_model_folder_without_a_tokenizer(tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    _assert_one_message(_rlx("eval", "--model", str(folder), "-o", str(tmp_path / "eval")),
                        f"cannot load a tokenizer from '{folder}'", "set model.tokenizer")


def test_all_training_prompts_too_long_is_one_message(tmp_path):
    from rlx.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    proc = _rlx("run", f"model={model}", "model.max_seq_len=4", f"output_dir={tmp_path / 'run'}",
                "logging.progress=false")
    _assert_one_message(proc, "training prompts are too long for model.max_seq_len=4 (prompt + completion tokens): "
                              "the shortest prompt has", "Raise model.max_seq_len above")
    assert "dropped" not in proc.stdout  # no "N prompts dropped" line before the error


def test_fitting_problems_names_the_lengths():
    from rlx.data import fitting_problems
    from rlx.interfaces import Problem

    class Encoder:
        max_seq_len = 5

        def encode(self, p):
            return [0] * len(p.answer)

        def fits(self, p):
            return len(self.encode(p)) < self.max_seq_len

    class Env:
        def problems(self, split):
            return [Problem(str(n), ({"role": "user", "content": "q"},), "x" * n) for n in (7, 9)]

    with pytest.raises(ConfigError) as info:
        fitting_problems(Env(), Encoder(), "train")
    assert str(info.value) == (
        "all 2 training prompts are too long for model.max_seq_len=5 (prompt + completion tokens): the shortest prompt "
        "has 7 tokens, the longest 9. Raise model.max_seq_len above 7 (e.g. model.max_seq_len=265)"
    )


# ------------------------------------------------------------------------------------------------ Ctrl-C

_INTERRUPT_AT_START = textwrap.dedent("""
    import sys
    import rlx.run
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    rlx.run.resolve_model = interrupted  # Ctrl-C while the model is being built
    from rlx.cli import main
    main(sys.argv[1:])
""")


def test_ctrl_c_says_where_it_stopped(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_AT_START, "run", f"output_dir={tmp_path / 'run'}",
                           "logging.progress=false"], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ})
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert _flat(proc.stderr) == ("interrupted while starting; no checkpoint was written yet; run the same command "
                                  "again to start over")
