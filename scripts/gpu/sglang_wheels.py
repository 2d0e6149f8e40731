"""Download the wheels of scripts/gpu/sglang-0.5.14-cuda13-py312.txt for a CUDA 13 / Python 3.12 x86_64 host.

    python scripts/gpu/sglang_wheels.py WHEELDIR [--keep-fa3]

By default sglang-kernel is rewritten without FlashAttention-3 (`sgl_kernel/flash_ops`, imported only by the fa3
attention backend) and without the sm100 (Blackwell) ops: 107 MB instead of 700 MB, for hosts reached through a
small upload limit. Such an engine needs `generator.attention_backend=triton` (or flashinfer with its cubins).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

LIST = Path(__file__).with_name("sglang-0.5.14-cuda13-py312.txt")
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux1_x86_64"]  # fmt: skip
FA3_AND_SM100 = ("sgl_kernel/flash_ops.abi3.so", "sgl_kernel/sm100/common_ops.abi3.so")


def strip_wheel(path: Path, drop: tuple[str, ...]) -> None:
    """Rewrite `path` without the members in `drop` (and their RECORD lines)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                keep = [line for line in data.split(b"\n") if not line.startswith(tuple(d.encode() for d in drop))]
                data = b"\n".join(keep)
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheeldir", type=Path)
    ap.add_argument("--keep-fa3", action="store_true", help="keep sglang-kernel whole (FA3 + sm100 ops)")
    args = ap.parse_args()
    reqs = [line.strip() for line in LIST.read_text().splitlines() if line.strip() and not line.startswith("#")]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(args.wheeldir), *(f"--platform={p}" for p in PLATFORMS), *reqs]  # fmt: skip
    subprocess.run(cmd, check=True)
    if not args.keep_fa3:
        for wheel in args.wheeldir.glob("sglang_kernel-*.whl"):
            strip_wheel(wheel, FA3_AND_SM100)
    total = sum(p.stat().st_size for p in args.wheeldir.glob("*.whl"))
    print(f"{len(list(args.wheeldir.glob('*.whl')))} wheels, {total / 1e6:.0f} MB in {args.wheeldir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
