"""Tiny models for conformance tests: one shared tokenizer, three weight sets of the same architecture.

`base` is what a generator under test is built from; `other` (another seed) and `eos` (EOS wired to be
likely) are pushed into it with `update_weights`, so a suite needs only one engine per test class.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlx.models.tiny import build_tiny_qwen2, build_tokenizer, default_corpus

if TYPE_CHECKING:
    import pytest
    import torch

# Larger than HF's 0.02 so next-token distributions are peaked (top-1 ~ 20%): greedy choices are clear and
# sampled sequences still differ. EOS bias 3 gives p(eos) ~ 0.2 per step with these weights.
SUITE_INIT_STD = 0.2
SUITE_EOS_LOGIT_BIAS = 3.0


@dataclass(frozen=True)
class TinyModels:
    """Folders of three tiny Qwen2 models sharing tokenizer and shapes (HF safetensors, fp32)."""

    base: str
    other: str
    eos: str


def make_tiny_model(
    out_dir: str | os.PathLike[str], *, seed: int = 0, eos_logit_bias: float | None = None, **model_kwargs: object
) -> str:
    """One tiny model (tokenizer from the built-in corpus, peaked random weights) in `out_dir`."""
    model_kwargs.setdefault("init_std", SUITE_INIT_STD)
    tokenizer = build_tokenizer(default_corpus())
    return build_tiny_qwen2(out_dir, tokenizer, seed=seed, eos_logit_bias=eos_logit_bias, **model_kwargs)  # type: ignore[arg-type]


def make_tiny_models(root: str | os.PathLike[str]) -> TinyModels:
    """Build the suite's three models under `root` (about a second on a CPU)."""
    root = Path(root)
    tokenizer = build_tokenizer(default_corpus())
    common = {"init_std": SUITE_INIT_STD, "max_position_embeddings": 512}
    return TinyModels(
        base=build_tiny_qwen2(root / "base", tokenizer, seed=0, **common),  # type: ignore[arg-type]
        other=build_tiny_qwen2(root / "other", tokenizer, seed=1, **common),  # type: ignore[arg-type]
        eos=build_tiny_qwen2(root / "eos", tokenizer, seed=0, eos_logit_bias=SUITE_EOS_LOGIT_BIAS, **common),  # type: ignore[arg-type]
    )


_SESSION_MODELS: dict[str, TinyModels] = {}


def session_tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The suite's models, built once per pytest session (shared by every conformance class)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _SESSION_MODELS:
        _SESSION_MODELS[key] = make_tiny_models(tmp_path_factory.mktemp("rlx-tiny-models"))
    return _SESSION_MODELS[key]


def iter_safetensors(model_dir: str | os.PathLike[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (HF name, tensor) from a model folder's safetensors files, one tensor at a time."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
