"""Runs a model-written Python snippet in a separate, resource-limited process and returns what it printed.

Limits: wall clock, CPU time, address space, output size, no new processes, a fresh empty working directory,
a scrubbed environment, stdin closed. This contains runaway and careless code (loops, huge prints, fork
bombs, memory hogs, `os.system`); it is NOT a security boundary against a determined attacker: without
OS-level isolation (a container, gVisor, nsjail, a VM) a snippet can use ctypes to get around the Python-level
guards. docs/environments.md says exactly what is and is not isolated.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlx.errors import RlxError

SandboxStatus = Literal["ok", "error", "timeout", "killed", "output_truncated"]

NOBODY_UID = 65534  # the conventional unprivileged user; a root run drops to it when it can
_MEMORY_EXIT = 86  # the bootstrap's exit code after a MemoryError, with _MEMORY_MARKER on stderr
_MEMORY_MARKER = "[sandbox: out of memory]"
_FILE_SIZE_LIMIT = 16 * 2**20  # bytes a snippet may write into one file of its working directory
_OPEN_FILES_LIMIT = 64
_STDERR_KEPT = 8192  # bytes of stderr kept (the end of a traceback)


class PythonToolConfig(BaseModel):
    """Limits of one Python tool call (the `python_tool:` section of an environment's config)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(10.0, gt=0, le=600, description="wall-clock limit of one call; then it is killed")
    cpu_s: float = Field(5.0, gt=0, le=600, description="CPU-time limit (RLIMIT_CPU, whole seconds, rounded up)")
    memory_mb: int = Field(1024, ge=128, description="address-space limit (RLIMIT_AS) in MiB, interpreter included")
    max_output_chars: int = Field(
        4000,
        ge=100,
        description="stdout kept (the start and the end); a snippet printing 64x this much is killed",
    )


@dataclass(frozen=True)
class SandboxResult:
    """What one call did.

    status: "ok" (exit 0), "output_truncated" (exit 0, stdout longer than max_output_chars: its start and end
    are kept), "error" (an exception or a non-zero exit: `stderr` has the traceback's end), "timeout" (past
    timeout_s: killed), "killed" (`reason`: "memory", "cpu", "output", or "signal NAME").
    """

    status: SandboxStatus
    stdout: str
    stderr: str
    exit_code: int | None
    reason: str | None
    wall_s: float
    output_bytes: int  # all stdout bytes the snippet wrote, kept or not


# Runs inside the child, before the snippet: limits, stdin, privileges are already dropped by the parent.
_BOOTSTRAP = r"""
import builtins, json, linecache, os, resource, sys, traceback
limits = json.loads(sys.argv[1])
workdir = os.path.realpath(os.getcwd())
for name, value in (("RLIMIT_AS", limits["memory_bytes"]), ("RLIMIT_FSIZE", limits["file_bytes"]),
                    ("RLIMIT_NOFILE", limits["open_files"]), ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", 0)):
    try:  # macOS does not enforce every limit (RLIMIT_AS): the others still apply
        resource.setrlimit(getattr(resource, name), (value, value))
    except (AttributeError, ValueError, OSError):
        pass
resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
try:
    os.nice(10)  # the run's own processes come first
except OSError:
    pass
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
with open(limits["code_file"], encoding="utf-8") as f:
    code = f.read()
os.unlink(limits["code_file"])
linecache.cache["<snippet>"] = (len(code), None, code.splitlines(True), "<snippet>")

def _inside(path, roots):
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)

read_roots = [os.path.realpath(p) for p in {*sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix} if p]
read_roots = [p for p in read_roots if os.path.isdir(p)] + [os.path.realpath(p) for p in (
    workdir, "/dev/null", "/dev/urandom", "/proc/self", "/usr/share/zoneinfo", "/etc/localtime")]
write_roots = [os.path.realpath(workdir), "/dev/null"]
blocked = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
           "pty.spawn", "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "os.chroot",
           "os.setuid", "os.setgid", "os.setreuid", "os.killpg", "os.chdir", "os.chown", "shutil.chown"}
path_writes = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.symlink", "os.link",
               "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
me = os.getpid()

def _check(path, roots, what):
    if isinstance(path, int):
        return
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.path.join(workdir, os.fspath(path)))
    if not _inside(real, roots):
        raise PermissionError(f"sandbox: {what} {path!r} is outside the sandbox")

def _audit(event, args):
    if event in blocked:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        _check(path, write_roots if writing else read_roots, "writing" if writing else "reading")
    elif event in ("os.listdir", "os.scandir") and args and args[0] is not None:
        _check(args[0], read_roots, "listing")
    elif event in path_writes:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)):
                _check(path, write_roots, "changing")
    elif event == "os.kill" and args[0] not in (0, me):
        raise PermissionError("sandbox: os.kill of another process is not allowed")

sys.addaudithook(_audit)
namespace = {"__name__": "__main__", "__builtins__": builtins}
try:
    exec(compile(code, "<snippet>", "exec"), namespace)
except SystemExit:
    sys.stdout.flush()
    raise
except BaseException as error:
    report = traceback.TracebackException(type(error), error, error.__traceback__)
    for part in (report, *(e for e in (report.__cause__, report.__context__) if e is not None)):
        part.stack = traceback.StackSummary.from_list([f for f in part.stack if f.filename != "<string>"])
    sys.stderr.write("".join(report.format()))  # the snippet's frames only, not this bootstrap's
    sys.stdout.flush()
    if isinstance(error, MemoryError):
        sys.stderr.write(limits["memory_marker"] + "\n")
        os._exit(limits["memory_exit"])
    sys.exit(1)
"""


def _scrubbed_environment(workdir: str) -> dict[str, str]:
    """No secrets, tokens or paths of the run: only what a plain interpreter needs."""
    threads = "1"  # BLAS thread pools would need new threads, which RLIMIT_NPROC forbids
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "NUMEXPR_NUM_THREADS": threads,
    }


@lru_cache(maxsize=1)
def unprivileged_user() -> int | None:
    """NOBODY_UID when this process is root and that user can start the interpreter, else None.

    Tried once per process: the interpreter may live where `nobody` cannot read (e.g. under /root).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", "pass"],
            user=NOBODY_UID,
            group=NOBODY_UID,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return NOBODY_UID if done.returncode == 0 else None


class _Capture:
    """The start and the end of a byte stream, and its length."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[: max(0, len(self.tail) - self.keep)]

    def text(self, max_chars: int) -> tuple[str, bool]:
        """The stream as text of at most ~max_chars: its start, a marker, its end. (text, truncated)."""
        if self.total <= len(self.head) + len(self.tail):  # nothing was dropped
            whole = (self.head + self.tail).decode("utf-8", errors="replace")
            if len(whole) <= max_chars:
                return whole, False
            head, tail = whole[: max_chars * 2 // 3], whole[-(max_chars // 3) :]
        else:
            head = self.head.decode("utf-8", errors="replace")[: max_chars * 2 // 3]
            tail = self.tail.decode("utf-8", errors="replace")[-(max_chars // 3) :]
        return f"{head}\n[... output truncated: {self.total} bytes in all ...]\n{tail}", True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the snippet and anything it started in its session
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, config: PythonToolConfig | None = None) -> SandboxResult:
    """Run `code` with the limits of `config` and return its status and output. Never raises on bad code.

    Thread-safe: each call has its own process, directory and pipes (an environment may run many at once).
    """
    if not hasattr(os, "wait4"):
        raise RlxError("the Python sandbox (rlx.tools.run_python) needs a POSIX system: Linux or macOS")
    config = config or PythonToolConfig()
    start = time.monotonic()
    deadline = start + config.timeout_s
    workdir = tempfile.mkdtemp(prefix="rlx-python-")
    try:
        return _run(code, config, workdir, start, deadline)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(code: str, config: PythonToolConfig, workdir: str, start: float, deadline: float) -> SandboxResult:
    code_file = os.path.join(workdir, ".snippet.py")
    with open(code_file, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(code)
    user = unprivileged_user()
    credentials: dict[str, object] = {}
    if user is not None:
        os.chown(workdir, user, user)
        os.chown(code_file, user, user)
        credentials = {"user": user, "group": user, "extra_groups": []}
    limits = {
        "memory_bytes": config.memory_mb * 2**20,
        "cpu_s": max(1, math.ceil(config.cpu_s)),
        "file_bytes": _FILE_SIZE_LIMIT,
        "open_files": _OPEN_FILES_LIMIT,
        "code_file": code_file,
        "memory_exit": _MEMORY_EXIT,
        "memory_marker": _MEMORY_MARKER,
    }
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", "-u", "-X", "utf8", "-c", _BOOTSTRAP, json.dumps(limits)],
            cwd=workdir,
            env=_scrubbed_environment(workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: one kill reaches everything it started
            close_fds=True,
            **credentials,  # type: ignore[arg-type]
        )
    except OSError as error:
        return SandboxResult("error", "", f"the sandbox could not start Python: {error}", None, None, 0.0, 0)
    stdout = _Capture(4 * config.max_output_chars)
    stderr = _Capture(_STDERR_KEPT)
    kill_after = max(2**20, 64 * config.max_output_chars)
    pump = _Pump(process, stdout, stderr, kill_after)
    try:
        pump.run(deadline)
    finally:
        _kill_group(process)  # the snippet, and anything it started that outlived it
        pump.reap()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    returncode, killed_for = pump.returncode, pump.killed_for
    assert returncode is not None
    wall_s = time.monotonic() - start
    text, truncated = stdout.text(config.max_output_chars)
    err, _ = stderr.text(_STDERR_KEPT)
    cpu_limit_hit = pump.cpu_used_s >= limits["cpu_s"] - 0.05
    out_of_memory = returncode == _MEMORY_EXIT and err.rstrip().endswith(_MEMORY_MARKER)
    status, reason = _status(returncode, killed_for, truncated, cpu_limit_hit, out_of_memory)
    return SandboxResult(status, text, err, returncode, reason, wall_s, stdout.total)


class _Pump:
    """Reads both pipes until the snippet exits (or must be killed), and reaps it with its CPU time."""

    def __init__(self, process: subprocess.Popen[bytes], stdout: _Capture, stderr: _Capture, kill_after: int):
        self.process = process
        self.stdout, self.stderr = stdout, stderr
        self.kill_after = kill_after
        self.killed_for: str | None = None  # "timeout" or "output"
        self.returncode: int | None = None
        self.cpu_used_s = 0.0

    def _wait(self, options: int) -> bool:
        pid, status, usage = os.wait4(self.process.pid, options)
        if not pid:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_used_s = usage.ru_utime + usage.ru_stime
        self.process.returncode = self.returncode  # reaped here, so that Popen never waits for it again
        return True

    def run(self, deadline: float) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ, self.stdout)
            selector.register(self.process.stderr, selectors.EVENT_READ, self.stderr)
            exited = False
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not exited:
                    self.killed_for = "timeout"
                    return
                # after the exit, only what is already in the pipes: a child it left behind may hold them open
                ready = selector.select(timeout=0 if exited else min(remaining, 0.05)) if selector.get_map() else []
                for key, _ in ready:
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    key.data.add(data)
                    if self.stdout.total + self.stderr.total > self.kill_after:
                        self.killed_for = "output"
                        return
                if exited and not ready:
                    return
                if not exited:
                    exited = self._wait(os.WNOHANG)
                    if not exited and not selector.get_map():
                        time.sleep(0.01)  # pipes closed, the snippet still running

    def reap(self) -> None:
        if self.returncode is None:
            try:
                self._wait(0)
            except ChildProcessError:  # reaped elsewhere: no CPU time known
                self.returncode = self.process.wait()


def _status(
    returncode: int, killed_for: str | None, truncated: bool, cpu_limit_hit: bool, out_of_memory: bool
) -> tuple[SandboxStatus, str | None]:
    if killed_for == "timeout":
        return "timeout", None
    if killed_for == "output":
        return "killed", "output"
    if out_of_memory:
        return "killed", "memory"
    if returncode < 0:
        number = -returncode
        if number == signal.SIGXCPU or (number == signal.SIGKILL and cpu_limit_hit):
            return "killed", "cpu"  # SIGXCPU at the soft CPU limit, SIGKILL at the hard one
        if number in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGKILL):
            return "killed", "memory"  # C code that failed to allocate under RLIMIT_AS, or the OOM killer
        return "killed", f"signal {signal.Signals(number).name}"
    if returncode != 0:
        return "error", None
    return ("output_truncated" if truncated else "ok"), None
