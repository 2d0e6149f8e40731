"""Which model a run trains, in one place: `resolve_model` turns the `model:` config section into a `ModelSpec`
with a real path (`builtin:tiny` -> the embedded model, built for the run's environment and cached), and
`load_tokenizer` loads its tokenizer. Components only ever receive resolved specs, never a `builtin:` name.

Submodules: `tiny` (local builders of tiny Qwen2 models and tokenizers), `embedded` (the `builtin:tiny` model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlx.errors import ConfigError
from rlx.interfaces import Environment, ModelSpec

if TYPE_CHECKING:
    from rlx.config import ModelConfig

BUILTIN_PREFIX = "builtin:"


def resolve_model(model: ModelConfig, env: Environment, *, seed: int, console: Any = None) -> ModelSpec:
    """The `model:` section -> a ModelSpec whose path is a local folder or a hub id.

    `builtin:<name>` builds (once, then cached) the embedded model for `env`; a local path must be a Hugging Face
    model folder (config.json); anything else is taken as a hub id and loaded by the components."""
    path = model.path
    if path.startswith(BUILTIN_PREFIX):
        from rlx.models.embedded import ensure_embedded_model

        path = str(ensure_embedded_model(path.removeprefix(BUILTIN_PREFIX), env, seed=seed, console=console))
    else:
        path = check_model_path(path)
    return ModelSpec(
        path=path,
        dtype=model.dtype,
        tokenizer=check_model_path(model.tokenizer, what="model.tokenizer") if model.tokenizer else None,
        trust_remote_code=model.trust_remote_code,
        max_seq_len=model.max_seq_len,
    )


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists()


def check_model_path(path: str, *, what: str = "model.path") -> str:
    """A local folder (made absolute) that holds a Hugging Face model, or `path` unchanged as a hub id."""
    if not _looks_local(path):
        return path
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(f"{what} '{path}' does not exist (give a local Hugging Face folder or a hub id)")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        found = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
        raise ConfigError(
            f"{what} '{path}' is not a Hugging Face model folder: it has no config.json"
            + (f" (it holds {', '.join(found)}{', ...' if len(found) == 8 else ''})" if found else "")
            + ". Give a folder written by save_pretrained (or `rlx export`), a hub id, or builtin:tiny"
        )
    return str(folder.resolve())


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(model: ModelSpec) -> Any:
    """The model's tokenizer; it must have a chat template (rlx prompts are chat messages)."""
    from transformers import AutoTokenizer

    folder = Path(model.tokenizer_path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build some default tokenizer instead of saying so
        raise ConfigError(
            f"cannot load a tokenizer from '{folder}': it has none of {', '.join(TOKENIZER_FILES)}. The model folder "
            "needs its tokenizer files (save_pretrained of the tokenizer, or `rlx export`), or set model.tokenizer"
        )
    try:
        tok = AutoTokenizer.from_pretrained(model.tokenizer_path, trust_remote_code=model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a folder without a tokenizer
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load a tokenizer from '{model.tokenizer_path}' ({type(exc).__name__}: {detail}). The model "
            "folder needs tokenizer files (tokenizer.json or tokenizer_config.json), or set model.tokenizer"
        ) from exc
    if tok.chat_template is None:
        raise ConfigError(f"the tokenizer of '{model.tokenizer_path}' has no chat template; rlx prompts are chat messages")
    return tok


__all__ = ["BUILTIN_PREFIX", "check_model_path", "load_tokenizer", "resolve_model"]
