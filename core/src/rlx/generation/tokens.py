"""Which token ids end a completion (EOS) and pad a batch, read once from a model folder or hub id.

Importing this is cheap: transformers is imported only when `special_tokens` is called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rlx.errors import ComponentError
from rlx.interfaces import ModelSpec


@dataclass(frozen=True)
class SpecialTokens:
    """eos_ids: every EOS id the model declares, in discovery order (generation config, model config, tokenizer),
    without duplicates; pad_id: the declared pad id, else the first EOS id."""

    eos_ids: tuple[int, ...]
    pad_id: int


# Files a tokenizer is loaded from. Without any of them transformers 5 still builds a tokenizer from the model
# type's defaults (e.g. Qwen2: a one-token vocabulary whose EOS is id 0), which would add a bogus EOS id.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _has_tokenizer(path: str) -> bool:
    if not os.path.isdir(path):
        return True  # a hub id: let transformers decide
    return any(os.path.exists(os.path.join(path, name)) for name in _TOKENIZER_FILES)


def _ids(value: Any) -> list[int]:
    """An `eos_token_id`-style field (an int, a list of ints, or None) as a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return []


def special_tokens(model: ModelSpec, *, tokenizer: bool = True) -> SpecialTokens:
    """EOS and pad ids of `model`: generation_config.json, then config.json, then (unless `tokenizer` is False,
    for engines that skip the tokenizer) the tokenizer. A folder without a generation config or tokenizer files
    is fine (generation from token ids still works); one that declares no EOS at all is a ComponentError."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    sources: list[Any] = []
    try:
        sources.append(GenerationConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code))
    except (OSError, ValueError):  # no (usable) generation_config.json
        pass
    sources.append(AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code))
    if tokenizer and _has_tokenizer(model.tokenizer_path):
        try:
            sources.append(
                AutoTokenizer.from_pretrained(model.tokenizer_path, trust_remote_code=model.trust_remote_code)
            )
        except (OSError, ValueError):  # a folder without tokenizer files
            pass
    eos: list[int] = []
    pad: int | None = None
    for source in sources:
        eos.extend(_ids(getattr(source, "eos_token_id", None)))
        if pad is None:
            pads = _ids(getattr(source, "pad_token_id", None))
            pad = pads[0] if pads else None
    if not eos:
        raise ComponentError(
            f"model '{model.path}' declares no EOS token (generation_config.json, config.json or tokenizer): "
            "completions would never stop"
        )
    eos_ids = tuple(dict.fromkeys(eos))
    return SpecialTokens(eos_ids=eos_ids, pad_id=eos_ids[0] if pad is None else pad)
