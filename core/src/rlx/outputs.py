"""Folders rlx writes for people (run folders, Hugging Face exports, eval results): each carries a small marker
file so rlx knows it wrote it, nothing else is ever written over (unless the user says `--overwrite`), and a
replaced folder is swapped in whole: the new one is written beside it and the old removed only afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from rlx.errors import ConfigError

MARKER = ".rlx-output"
"""The marker file: JSON `{"kind": ..., "rlx_version": ..., "written_at": ...}`, in every folder rlx writes."""

_STAGING, _ASIDE = ".rlx-staging", ".rlx-aside"  # sibling names: `.<name>.rlx-staging-<id>`, `.<name>.rlx-aside-<id>`


def mark(folder: str | os.PathLike[str], kind: str) -> None:
    """Write the marker into `folder` (what `written_by_rlx` looks for)."""
    from rlx import __version__

    record = {"kind": kind, "rlx_version": __version__, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (Path(folder) / MARKER).write_text(json.dumps(record) + "\n")


KINDS = {"run": "an rlx run folder", "hf-export": "a Hugging Face export by rlx", "eval": "rlx evaluation results",
         "trainer-checkpoint": "an rlx trainer checkpoint"}


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of output rlx wrote at `path` (a folder or a link to one), or None when it holds no marker."""
    try:
        record = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return str(record.get("kind", "?")) if isinstance(record, dict) else None


def written_by_rlx(path: str | os.PathLike[str], kind: str | None = None) -> bool:
    """Whether `path` is a folder (or a link to one) that rlx wrote (of `kind`, when given): it holds the marker."""
    found = output_kind(path)
    return found is not None and (kind is None or found == kind)


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


OVERWRITE_REMEDY = "pass --overwrite to replace it (the new folder is written first, the old one removed after)"


def check_replaceable(dest: str | os.PathLike[str], *, kind: str, what: str, overwrite: bool = False,
                      remedy: str = OVERWRITE_REMEDY) -> None:
    """Raise a ConfigError when writing a `kind` output at `dest` would replace something rlx did not write.

    Replaceable without asking: nothing there (or a dangling link), an empty folder, or an output of the same kind
    rlx wrote (see `mark`): an export never replaces a run folder. `overwrite=True` (the user asked) replaces
    anything. `what` names the destination in the message, `remedy` says how to go on."""
    dest = Path(dest)
    if overwrite or not dest.exists() or is_empty_folder(dest) or written_by_rlx(dest, kind):
        return
    other = output_kind(dest)
    if other is not None:
        thing = f"{KINDS.get(other, other)}, not {KINDS.get(kind, kind)}"
    elif dest.is_dir():
        found = sorted(p.name for p in dest.iterdir())
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        thing = f"a folder rlx did not write (it holds {shown}; no {MARKER} marker)"
    else:
        thing = "a file" if dest.is_file() else "something that is not a folder"
    raise ConfigError(
        f"{what} '{dest}' exists and is {thing}; rlx will not replace it. Choose another destination, or {remedy}"
    )


def _siblings(dest: Path, tag: str) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}{tag}-*"))


def recover(dest: str | os.PathLike[str]) -> None:
    """Undo what a process killed mid-replace left: put a set-aside folder back if `dest` is missing, drop staging
    folders. Called before every replace; harmless when there is nothing to do."""
    dest = Path(dest)
    for aside in _siblings(dest, _ASIDE):
        if not (dest.exists() or dest.is_symlink()):
            os.replace(aside, dest)
        else:
            _remove(aside)
    for staging in _siblings(dest, _STAGING):
        _remove(staging)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def swap_in(new: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Put `new` (a complete folder or link, a sibling of `dest`) at `dest`. Whatever was at `dest` is renamed
    aside first and removed only once `new` is in place, so a kill at any moment loses nothing (`recover`)."""
    new, dest = Path(new), Path(dest)
    aside = None
    if dest.exists() or dest.is_symlink():
        aside = dest.parent / f".{dest.name}{_ASIDE}-{uuid.uuid4().hex[:8]}"
        os.replace(dest, aside)
    os.replace(new, dest)
    fsync_dir(dest.parent)
    if aside is not None:
        _remove(aside)


def replace_folder(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, kind: str, what: str = "output",
                   overwrite: bool = False) -> None:
    """Install the complete folder `src` at `dest` (marked as rlx's), refusing to replace what rlx did not write.

    `src` must be on the same filesystem as `dest` (a sibling is best): the swap is a pair of renames."""
    dest = Path(dest)
    check_replaceable(dest, kind=kind, what=what, overwrite=overwrite)
    recover(dest)
    mark(src, kind)
    fsync_dir(Path(src))
    swap_in(src, dest)


@contextlib.contextmanager
def writing_folder(dest: str | os.PathLike[str], *, kind: str, what: str, overwrite: bool = False,
                   remedy: str = OVERWRITE_REMEDY) -> Iterator[Path]:
    """Yield a path (not yet existing, beside `dest`) to write a whole folder into; on success it replaces `dest`.

    Refuses up front (before any work) when `dest` holds something rlx did not write and `overwrite` is off. If the
    body fails, `dest` is untouched and the partial folder removed.

        with writing_folder(out, kind="hf-export", what="export destination") as staging:
            trainer.export_hf(str(staging))
    """
    dest = Path(dest).expanduser()
    check_replaceable(dest, kind=kind, what=what, overwrite=overwrite, remedy=remedy)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    staging = dest.parent / f".{dest.name}{_STAGING}-{uuid.uuid4().hex[:8]}"
    try:
        yield staging
        if not staging.is_dir():
            raise RuntimeError(f"nothing was written to {staging}")
        mark(staging, kind)
        fsync_dir(staging)
        swap_in(staging, dest)
    finally:
        _remove(staging)


def link_folder(target_name: str, dest: str | os.PathLike[str], *, kind: str, what: str,
                remedy: str = OVERWRITE_REMEDY) -> None:
    """Make `dest` a relative link to its sibling `target_name`, an output of `kind` (replacing only what rlx wrote
    of that kind)."""
    dest = Path(dest)
    check_replaceable(dest, kind=kind, what=what, remedy=remedy)
    recover(dest)
    staging = dest.parent / f".{dest.name}{_STAGING}-{uuid.uuid4().hex[:8]}"
    staging.symlink_to(target_name)
    swap_in(staging, dest)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["KINDS", "MARKER", "check_replaceable", "link_folder", "mark", "output_kind", "recover", "replace_folder",
           "swap_in", "writing_folder", "written_by_rlx"]
