"""Resolve a RunConfig against the installed components: pick each component, validate its section with the
component's own Config, and describe the run. Nothing heavy is imported or loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from rlx.config import RunConfig, component_config, to_yaml
from rlx.interfaces import ComponentKind
from rlx.registry import Catalog, ComponentSpec

# config section name -> component kind
SECTIONS: dict[str, ComponentKind] = {"generator": "generator", "trainer": "trainer", "env": "environment"}


@dataclass
class Plan:
    """A validated run: the config plus, per kind, the chosen component and its typed Config."""

    config: RunConfig
    components: dict[ComponentKind, ComponentSpec]
    component_configs: dict[ComponentKind, BaseModel]

    def to_yaml(self) -> str:
        data = self.config.model_dump(mode="json")
        for section, kind in SECTIONS.items():
            data[section] = {"name": self.components[kind].name, **self.component_configs[kind].model_dump(mode="json")}
        import yaml

        return yaml.safe_dump(data, sort_keys=False)

    def describe(self) -> str:
        c = self.config
        g = c.grpo
        lines = [f"[bold]rlx run[/bold] '{c.name}' -> {c.output_dir}"]
        for kind in SECTIONS.values():
            spec = self.components[kind]
            lines.append(f"  {kind:<11} {spec.name:<8} ({spec.plugin.distribution} {spec.plugin.version})")
        lines.append(f"  model       {c.model.path} (dtype {c.model.dtype}, max_seq_len {c.model.max_seq_len})")
        lines.append(
            f"  grpo        {c.steps} steps x {g.prompts_per_step} prompts x {g.num_generations} samples; "
            f"{g.prompts_per_step * g.num_generations // g.mini_batch_size} optimizer steps/step; "
            f"baseline {g.baseline}{'+std' if g.normalize_std else ''}; loss {g.loss_agg}; "
            f"clip {g.clip_low}/{g.clip_high}; kl {g.kl_coef}"
        )
        lines.append(
            f"  cluster     {c.cluster.kind}: {c.cluster.trainer_workers} trainer worker(s), "
            f"{c.cluster.generator_replicas} generator replica(s)"
        )
        val = c.validation
        lines.append(
            f"  validation  {'every ' + str(val.period) + ' steps, k=' + str(val.samples_per_problem) if val.period else 'off'}; "
            f"checkpoints {'every ' + str(c.checkpoint.period) + ' steps' if c.checkpoint.period else 'at the end'}"
        )
        return "\n".join(lines)


def resolve_plan(config: RunConfig, catalog: Catalog | None = None) -> Plan:
    if catalog is None:
        from rlx.plugins import catalog as load_catalog

        catalog = load_catalog()
    components: dict[ComponentKind, ComponentSpec] = {}
    configs: dict[ComponentKind, BaseModel] = {}
    for section, kind in SECTIONS.items():
        chosen = getattr(config, section)
        spec = catalog.get(kind, chosen.name)
        configs[kind] = component_config(chosen, spec.config, section)
        spec.check_installed()
        components[kind] = spec
    return Plan(config, components, configs)


__all__ = ["Plan", "resolve_plan", "to_yaml"]
