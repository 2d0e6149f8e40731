"""Export a run checkpoint to a Hugging Face folder (what `rlx export` does)."""

from __future__ import annotations

from pathlib import Path

from rlx.checkpoint import COMPLETE_MARKER, CheckpointManager
from rlx.config import RunConfig, load_yaml
from rlx.errors import ConfigError
from rlx.interfaces import ModelSpec
from rlx.plan import resolve_plan
from rlx.registry import BuildContext


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the latest complete checkpoint of a run folder."""
    if (path / COMPLETE_MARKER).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = CheckpointManager(root).latest()
        if latest is not None:
            return latest.path
    raise ConfigError(f"no complete checkpoint at '{path}' (expected a step_N folder with a {COMPLETE_MARKER} file, "
                      f"or a run folder holding checkpoints/)")


def export_checkpoint(path: str | Path, out: str | Path) -> Path:
    ckpt = find_checkpoint(Path(path))
    data = load_yaml(ckpt / "config.yaml")
    config = RunConfig.model_validate({k: v for k, v in data.items()})
    plan = resolve_plan(config)
    m = config.model
    if m.path.startswith("builtin:"):
        raise ConfigError(f"{ckpt}/config.yaml names model '{m.path}' instead of a resolved folder")
    spec = ModelSpec(path=m.path, dtype=m.dtype, tokenizer=m.tokenizer, trust_remote_code=m.trust_remote_code,
                     max_seq_len=m.max_seq_len)
    from rlx.cluster.local import LocalTrainerGroup

    trainer = LocalTrainerGroup(plan.selection.trainer, BuildContext(seed=config.seed, model=spec), world_size=1)
    try:
        trainer.load_checkpoint(str(ckpt / "trainer"))
        trainer.export_hf(str(out))
    finally:
        trainer.close()
    return Path(out)
