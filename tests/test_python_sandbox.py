"""The sandboxed Python tool: statuses, limits, what it isolates, and that runaway snippets never hang the caller.

Each call starts an interpreter (~50 ms). Limits are checked by the status and reason a call reports, never by
how long it took; the waits bounded by HANG_GUARD_S only keep a broken limit from hanging the test run.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from rlx.tools import PythonToolConfig, SandboxResult, format_observation, last_python_block, run_python
from rlx.tools.code_blocks import truncate_middle

HANG_GUARD_S = 30.0
FAST = PythonToolConfig(timeout_s=5.0, cpu_s=5.0, memory_mb=512, max_output_chars=300)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie is dead, waiting for its new parent to reap it


def test_ok_prints_stdout() -> None:
    result = run_python("print('hi')\nprint(sum(range(10)))", FAST)
    assert (result.status, result.stdout, result.exit_code, result.reason) == ("ok", "hi\n45\n", 0, None)


def test_error_returns_the_traceback_tail_without_sandbox_frames() -> None:
    result = run_python("x = 1\n1 / 0", FAST)
    assert result.status == "error" and result.exit_code == 1
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert 'File "<snippet>", line 2' in result.stderr and "<string>" not in result.stderr
    assert run_python("def f(:\n    pass", FAST).status == "error"
    assert run_python("import sys; sys.exit(3)", FAST).status == "error"


def test_infinite_loop_is_killed_at_the_cpu_limit() -> None:
    result = run_python("while True:\n    pass", PythonToolConfig(timeout_s=60, cpu_s=1))
    assert (result.status, result.reason) == ("killed", "cpu")  # the cpu limit, not the 60 s wall clock


def test_sleeping_snippet_is_killed_at_the_wall_clock_limit() -> None:
    result = run_python("import time\nprint('started', flush=True)\ntime.sleep(600)", PythonToolConfig(timeout_s=1))
    assert result.status == "timeout" and result.stdout == "started\n"
    assert result.wall_s >= 1.0  # reported, and the limit never fires early


def test_huge_print_is_killed_and_long_output_is_truncated() -> None:
    huge = run_python("print('x' * 10**8)", FAST)
    assert (huge.status, huge.reason) == ("killed", "output")
    endless = run_python("while True:\n    print('spam')", FAST)
    assert (endless.status, endless.reason) == ("killed", "output")
    assert len(endless.stdout) < 2 * FAST.max_output_chars
    long = run_python("for i in range(1000):\n    print(i)", FAST)
    assert long.status == "output_truncated" and long.output_bytes == sum(len(f"{i}\n") for i in range(1000))
    assert long.stdout.startswith("0\n1\n2\n") and long.stdout.endswith("998\n999\n")
    assert "output truncated" in long.stdout and len(long.stdout) < FAST.max_output_chars + 100


def test_memory_hog_is_killed() -> None:
    for code in ("a = bytearray(4 * 1024**3)", "chunks = []\nwhile True:\n    chunks.append(' ' * 10**7)"):
        result = run_python(code, FAST)
        assert (result.status, result.reason) == ("killed", "memory"), result


def test_fork_bomb_and_process_creation_are_refused() -> None:
    for code in (
        "import os\nwhile True:\n    os.fork()",
        "import subprocess\nsubprocess.run(['true'])",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
    ):
        result = run_python(code, FAST)
        assert result.status == "error" and "is not allowed" in result.stderr, (code, result)


def test_os_system_is_refused_and_has_no_effect(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run_python(f"import os\nos.system('touch {marker}')", FAST)
    assert result.status == "error" and "os.system is not allowed" in result.stderr
    assert not marker.exists()


def test_children_that_get_past_the_guards_die_with_the_call() -> None:
    # ctypes calls fork() without Python's audit events: only RLIMIT_NPROC (not for root) and the process-group
    # kill at the end stop it. The child would sleep for ten minutes.
    code = "import ctypes, time\npid = ctypes.CDLL(None).fork()\nif pid == 0:\n    time.sleep(600)\nprint(pid)"
    result = run_python(code, FAST)
    assert result.status == "ok"
    pid = int(result.stdout.strip().splitlines()[-1])
    if pid > 0:  # the fork worked (running as root, where RLIMIT_NPROC does not apply)
        deadline = time.monotonic() + HANG_GUARD_S  # SIGKILL was sent; its delivery takes a moment
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    else:
        assert pid == -1  # refused by RLIMIT_NPROC


def test_files_of_the_run_are_not_readable_by_absolute_path(tmp_path: Path) -> None:
    secret = tmp_path / "run" / "checkpoint.txt"
    secret.parent.mkdir()
    secret.write_text("weights")
    result = run_python(f"print(open({str(secret)!r}).read())", FAST)
    assert result.status == "error" and "outside the sandbox" in result.stderr and "weights" not in result.stdout
    listing = run_python(f"import os\nprint(os.listdir({str(secret.parent)!r}))", FAST)
    assert listing.status == "error" and "checkpoint" not in listing.stdout
    write = run_python(f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')", FAST)
    assert write.status == "error" and not (tmp_path / "new.txt").exists()


def test_fresh_empty_working_directory_removed_afterwards() -> None:
    result = run_python("import os\nprint(os.listdir('.'))\nopen('a.txt', 'w').write('x')\nprint(os.getcwd())", FAST)
    listing, workdir = result.stdout.splitlines()
    assert result.status == "ok" and listing == "[]"
    assert not os.path.exists(workdir)
    assert run_python("import os\nos.chdir('/')", FAST).status == "error"


def test_environment_scrubbed_and_stdin_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    result = run_python("import os\nprint(sorted(os.environ))", FAST)
    assert result.status == "ok" and "HF_TOKEN" not in result.stdout and "secret-token" not in result.stdout
    stdin = run_python("print(input())", FAST)
    assert stdin.status == "error" and "EOFError" in stdin.stderr


def test_other_processes_cannot_be_signalled() -> None:
    result = run_python("import os\nos.kill(os.getppid(), 9)", FAST)
    assert result.status == "error" and "not allowed" in result.stderr  # and this test process is still here


def test_network_is_refused() -> None:
    result = run_python("import socket\nsocket.socket()", FAST)
    assert result.status == "error" and "not allowed" in result.stderr


def test_libraries_of_the_interpreter_still_import() -> None:
    result = run_python("import json, fractions, math\nprint(math.comb(10, 3), fractions.Fraction(2, 4))", FAST)
    assert (result.status, result.stdout) == ("ok", "120 1/2\n")


def test_parallel_calls_each_stay_within_their_limits() -> None:
    config = PythonToolConfig(timeout_s=1.5, cpu_s=60)
    results: list[SandboxResult] = []
    lock = threading.Lock()

    def call(code: str) -> None:
        result = run_python(code, config)
        with lock:
            results.append(result)

    codes = ["while True:\n    pass"] * 4 + ["import time\ntime.sleep(600)"] * 2 + ["print(6 * 7)"] * 2
    threads = [threading.Thread(target=call, args=(code,)) for code in codes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_GUARD_S)
    assert not any(thread.is_alive() for thread in threads)
    statuses = sorted(r.status for r in results)
    assert statuses == ["ok", "ok"] + ["timeout"] * 6
    assert all(r.stdout == "42\n" for r in results if r.status == "ok")


def test_config_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        PythonToolConfig.model_validate({"timeout": 1})
    with pytest.raises(ValidationError):
        PythonToolConfig(timeout_s=0)
    with pytest.raises(ValidationError):
        PythonToolConfig(memory_mb=16)


def test_last_python_block() -> None:
    turn = "First:\n```python\nprint(1)\n```\nthen\n```py\nprint(2)\n```\nDone."
    block = last_python_block(turn)
    assert block is not None and (block.code, block.closed) == ("print(2)", True)
    assert turn[block.end :] == "\nDone."
    unclosed = last_python_block("Let me check.\n```python\nx = 3\nprint(x)")
    assert unclosed is not None and (unclosed.code, unclosed.closed) == ("x = 3\nprint(x)", False)
    assert last_python_block("```python\nx = 3", allow_unclosed=False) is None
    assert last_python_block("no code, just ```text```") is None
    assert last_python_block("```python\nprint(1)\n```\n```python\nprint(2)").code == "print(2)"  # type: ignore[union-attr]


def _result(status: str, stdout: str = "", stderr: str = "", reason: str | None = None) -> SandboxResult:
    return SandboxResult(status, stdout, stderr, 0, reason, 1.25, len(stdout))  # type: ignore[arg-type]


def test_format_observation() -> None:
    assert format_observation(_result("ok", "42\n")) == "```output\n42\n```"
    assert format_observation(_result("ok")) == "```output\n[no output]\n```"
    error = format_observation(_result("error", "partial\n", "Traceback ...\nValueError: bad"))
    assert error == "```output\npartial\nTraceback ...\nValueError: bad\n```"
    assert format_observation(_result("timeout")) == "```output\n[timed out after 1.2 s]\n```"
    assert format_observation(_result("killed", reason="memory")) == "```output\n[killed: memory limit]\n```"
    long = format_observation(_result("output_truncated", "a" * 5000), max_chars=300)
    assert len(long) < 400 and "characters omitted" in long


def test_truncate_middle() -> None:
    assert truncate_middle("short", 10) == "short"
    text = "".join(str(i % 10) for i in range(100))
    cut = truncate_middle(text, 30)
    assert cut.startswith(text[:20]) and cut.endswith(text[-10:]) and "[... 70 characters omitted ...]" in cut
