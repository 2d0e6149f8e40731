"""Resolve a RunConfig against the installed components: pick each component, validate its section with the
component's own Config, and describe the run. Nothing heavy is imported or loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from rlx.algorithms import AlgorithmCatalog, Algorithms, select_algorithms
from rlx.config import RunConfig, component_config, to_yaml
from rlx.interfaces import ComponentKind
from rlx.registry import BuildContext, Catalog, ComponentSpec

# config section name -> component kind
SECTIONS: dict[str, ComponentKind] = {"generator": "generator", "trainer": "trainer", "env": "environment"}


@dataclass(frozen=True)
class Choice:
    """One chosen component and its own validated Config: all it needs to build itself."""

    spec: ComponentSpec
    config: BaseModel

    @classmethod
    def named(cls, kind: ComponentKind, name: str, config: BaseModel | None = None) -> Choice:
        """The installed component `name` of `kind` with `config` (default: its Config's defaults)."""
        from rlx.plugins import catalog

        spec = catalog().get(kind, name)
        return cls(spec, config if config is not None else spec.config())

    @property
    def name(self) -> str:
        return self.spec.name

    def build(self, ctx: BuildContext):  # noqa: ANN201 - a Generator, Trainer or Environment, by kind
        return self.spec.build(self.config, ctx)

    def options(self) -> dict:
        return {"name": self.spec.name, **self.config.model_dump(mode="json")}


@dataclass(frozen=True)
class Selection:
    """The three components of a run."""

    generator: Choice
    trainer: Choice
    environment: Choice

    def of(self, kind: ComponentKind) -> Choice:
        return getattr(self, kind)


@dataclass
class Plan:
    """A validated run: the config plus the chosen components, each with its typed Config."""

    config: RunConfig
    selection: Selection
    algorithms: Algorithms | None = None  # the grpo.* options, as registered (resolve_plan fills it)

    def to_yaml(self) -> str:
        data = self.config.model_dump(mode="json")
        for section, kind in SECTIONS.items():
            data[section] = self.selection.of(kind).options()
        import yaml

        return yaml.safe_dump(data, sort_keys=False)

    def describe(self) -> str:
        c = self.config
        g = c.grpo
        lines = [f"[bold]rlx run[/bold] '{c.name}' -> {c.output_dir}"]
        for kind in SECTIONS.values():
            spec = self.selection.of(kind).spec
            lines.append(f"  {kind:<11} {spec.name:<8} ({spec.plugin.distribution} {spec.plugin.version})")
        lines.append(f"  model       {c.model.path} (dtype {c.model.dtype}, max_seq_len {c.model.max_seq_len})")
        lines.append(
            f"  grpo        {c.steps} steps x {g.prompts_per_step} prompts x {g.num_generations} samples; "
            f"{g.prompts_per_step * g.num_generations // g.mini_batch_size} optimizer steps/step; "
            + (f"asynchronous, max staleness {g.max_staleness}" if g.max_staleness else "synchronous")
            + ("; pi_old from the train forward (no log-probs pass)" if g.pi_old_from_train_forward else "")
        )
        if self.algorithms is not None:
            lines.append(f"  algorithm   {self.algorithms.describe()}")
        ds, ov = g.dynamic_sampling, g.overlong
        lines.append(
            f"  sampling    dynamic sampling {'on, up to ' + str(ds.max_rounds) + ' rounds' if ds.enabled else 'off'}; "
            f"overlong filter {'on' if ov.filter else 'off'}; soft overlong penalty "
            f"{f'{ov.penalty} over the last {ov.soft_penalty_tokens} tokens' if ov.soft_penalty_tokens else 'off'}"
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


def resolve_plan(config: RunConfig, catalog: Catalog | None = None,
                 algorithm_catalog: AlgorithmCatalog | None = None) -> Plan:
    """Pick the components and the grpo.* algorithm options; a wrong name is one error with a did-you-mean."""
    algorithms = select_algorithms(config.grpo, algorithm_catalog)
    if catalog is None:
        from rlx.plugins import catalog as load_catalog

        catalog = load_catalog()
    choices: dict[ComponentKind, Choice] = {}
    for section, kind in SECTIONS.items():
        chosen = getattr(config, section)
        spec = catalog.get(kind, chosen.name)
        validated = component_config(chosen, spec.config, section)
        spec.check_installed()
        choices[kind] = Choice(spec, validated)
    return Plan(config, Selection(**choices), algorithms)


__all__ = ["Choice", "Plan", "Selection", "resolve_plan", "to_yaml"]
