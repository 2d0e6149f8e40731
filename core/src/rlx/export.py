"""Export a run checkpoint to a Hugging Face folder (what `rlx export` does)."""

from __future__ import annotations

from pathlib import Path

from rlx.checkpoint import COMPLETE_MARKER, CheckpointManager
from rlx.config import RunConfig, load_yaml
from rlx.errors import ConfigError
from rlx.interfaces import ModelSpec
from rlx.outputs import check_replaceable, writing_folder
from rlx.plan import resolve_plan
from rlx.registry import BuildContext


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the latest complete checkpoint of a run folder."""
    if (path / COMPLETE_MARKER).is_file():
        return path
    damaged: dict[Path, str] = {}
    for root in (path / "checkpoints", path):
        manager = CheckpointManager(root)
        latest = manager.latest()
        if latest is not None:
            return latest.path
        damaged.update(manager.damaged)
    if damaged:
        raise ConfigError(f"no usable checkpoint at '{path}': {'; '.join(damaged.values())}")
    raise ConfigError(f"no complete checkpoint at '{path}' (expected a step_N folder with a {COMPLETE_MARKER} file, "
                      f"or a run folder holding checkpoints/)")


def export_checkpoint(path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write checkpoint `path`'s policy as a Hugging Face folder at `out`. `out` may be an earlier rlx output
    (replaced whole, once the new folder is complete); anything else there is refused unless `overwrite`."""
    out = Path(out).expanduser()
    check_replaceable(out, kind="hf-export", what="export destination", overwrite=overwrite)  # before any model is loaded
    ckpt = find_checkpoint(Path(path))
    if out.resolve() == ckpt.resolve() or out.resolve() in ckpt.resolve().parents:
        raise ConfigError(f"export destination '{out}' holds the checkpoint being exported ({ckpt}): choose a "
                          "destination outside it (e.g. beside the run folder)")
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
        with writing_folder(out, kind="hf-export", what="export destination", overwrite=overwrite) as staging:
            trainer.export_hf(str(staging))
    finally:
        trainer.close()
    return out
