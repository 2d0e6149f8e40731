"""Which settings may change when a run resumes from a checkpoint: the saved run config (the checkpoint's
config.yaml) is compared with the new one, key by key, with the current code's defaults filled in on both sides.

Incompatible (they change what a step means, the data, or the shapes of what was saved): the seed, the model, the
environment and its options, the trainer component, and every `grpo.*` setting but `grpo.max_staleness` (the
checkpoint holds the cursor of the prompts trained on, so switching between synchronous and asynchronous steps
loses or repeats nothing). Everything else (steps, logging, validation, checkpoint period, cluster layout,
generator and trainer options...) may change, and is reported.

A component decides for its own options with `json_schema_extra={"resume": "safe"}` (or `"incompatible"`) on a
field of its Config, e.g. an environment's worker count is safe to change although its data options are not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from rlx.plan import Plan

log = logging.getLogger("rlx.resume")

INCOMPATIBLE_PREFIXES = ("seed", "model.", "env.", "trainer.name", "grpo.")
HARMLESS_KEYS = ("grpo.max_staleness",)
MODEL_PATH = "model.path"
COMPONENT_SECTIONS = ("generator", "trainer", "env")
_MISSING = "(not set)"


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def line(self, width: int) -> str:
        return f"    {self.key + ':':<{width}} {_show(self.old)} -> {_show(self.new)}"


@dataclass
class ConfigChanges:
    """What differs between the saved and the new config, split by whether a resume may accept it."""

    incompatible: list[Change] = field(default_factory=list)
    harmless: list[Change] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.incompatible or self.harmless)


def is_incompatible(key: str, declared: dict[str, str] | None = None) -> bool:
    """Whether changing `key` on resume is refused: a component's own declaration (see the module docstring) for
    the option `key` is or is under, else the core's rule."""
    for prefix, verdict in (declared or {}).items():
        if key == prefix or key.startswith(prefix + "."):
            return verdict == "incompatible"
    if key in HARMLESS_KEYS:
        return False
    return any(key == p.rstrip(".") or key.startswith(p) for p in INCOMPATIBLE_PREFIXES)


def declared_by_components(plan: Plan) -> dict[str, str]:
    """{"env.num_workers": "safe", ...}: what the chosen components' Configs say about their own options."""
    from rlx.plan import SECTIONS

    out = {}
    for section, kind in SECTIONS.items():
        for name, info in plan.selection.of(kind).spec.config.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("resume") in ("safe", "incompatible"):
                out[f"{section}.{name}"] = str(extra["resume"])
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"a.b.c": value}; lists and scalars are values."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def same_model(old: Any, new: Any) -> bool:
    """Resolved model paths name the same model: the same folder, or the same embedded model (its folder name is a
    hash of how it was built, so another RLX_CACHE holding it is the same model)."""
    if old == new:
        return True
    if not isinstance(old, str) or not isinstance(new, str):
        return False
    a, b = Path(old).expanduser(), Path(new).expanduser()
    if a.name == b.name and a.name.startswith("embedded-"):
        return True
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def compare_configs(saved: dict[str, Any], new: dict[str, Any], *, skip: tuple[str, ...] = (),
                    declared: dict[str, str] | None = None) -> ConfigChanges:
    """Key-by-key differences (flattened, dotted keys), sorted; keys in `skip` are not compared. `declared`: the
    components' own verdicts on their options (`declared_by_components`)."""
    old_flat, new_flat = flatten(saved), flatten(new)
    # a section that names another component: its name is the change (the options belong to different components)
    switched = [s for s in COMPONENT_SECTIONS if old_flat.get(f"{s}.name") != new_flat.get(f"{s}.name")]
    changes = ConfigChanges()
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if key in skip or any(key.startswith(f"{s}.") and key != f"{s}.name" for s in switched):
            continue
        old, value = old_flat.get(key, _MISSING), new_flat.get(key, _MISSING)
        if key == MODEL_PATH and same_model(old, value):
            continue
        if old == value:
            continue
        (changes.incompatible if is_incompatible(key, declared) else changes.harmless).append(Change(key, old, value))
    return changes


def with_current_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved config as the current code reads it (defaults of settings added since filled in), in the shape of
    `Plan.to_yaml`; the raw mapping when it no longer validates (then every key is compared as written)."""
    from rlx.config import RunConfig
    from rlx.errors import RlxError
    from rlx.plan import resolve_plan

    try:
        return yaml.safe_load(resolve_plan(RunConfig.model_validate(saved)).to_yaml())
    except (RlxError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        log.debug("saved config does not validate with this rlx (%s); comparing it as written", exc)
        return saved


def load_saved_config(checkpoint: Path) -> dict[str, Any] | None:
    """The run config a checkpoint was written with, or None when it has none that reads as a mapping."""
    path = checkpoint / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read %s (%s): resuming without comparing the run config", path, exc)
        return None
    return data if isinstance(data, dict) else None


def refusal_message(output_dir: str, checkpoint: Path, step: int, changes: ConfigChanges) -> str:
    width = max(len(c.key) for c in [*changes.incompatible, *changes.harmless]) + 1
    lines = [
        f"cannot resume the run in '{output_dir}' from its checkpoint at step {step}: these settings differ from "
        "the ones it was trained with, and they change the data, the model or what a step means:",
        *(c.line(width) for c in changes.incompatible),
    ]
    if changes.harmless:
        lines += ["  (these changed too, and could be resumed with:)", *(c.line(width) for c in changes.harmless)]
    lines.append(
        "To continue that run, use the settings it was trained with (they are in "
        f"{checkpoint / 'config.yaml'}). To start over in this folder, add --fresh (or checkpoint.resume=false): the "
        "earlier checkpoints and metrics are set aside, not deleted. To keep both runs, choose a new output_dir."
    )
    return "\n".join(lines)


def harmless_message(changes: ConfigChanges) -> str:
    shown = ", ".join(f"{c.key} {_show(c.old)} -> {_show(c.new)}" for c in changes.harmless)
    return f"resuming with changed settings (they do not change what a step means): {shown}"


def _show(value: Any, limit: int = 60) -> str:
    text = value if value == _MISSING else repr(value) if isinstance(value, str) else yaml.safe_dump(
        value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["Change", "ConfigChanges", "compare_configs", "declared_by_components", "flatten", "harmless_message", "is_incompatible",
           "load_saved_config", "refusal_message", "same_model", "with_current_defaults"]
