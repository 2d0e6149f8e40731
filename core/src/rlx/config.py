"""Run configuration: pydantic models (extra="forbid"), YAML recipes with `defaults:` inheritance, dotted
command-line overrides, and validation of each component's section against that component's own Config.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlx.errors import ConfigError, did_you_mean

log = logging.getLogger("rlx.config")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    """The policy model: a local HF folder or a hub id. `builtin:tiny` is the embedded CPU model."""

    path: str = "builtin:tiny"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tokenizer: str | None = None
    trust_remote_code: bool = False
    max_seq_len: int = Field(1024, gt=0, description="prompt + completion tokens")


class ComponentSection(BaseModel):
    """`name` picks the component; every other key is checked against that component's own Config."""

    model_config = ConfigDict(extra="allow")
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DynamicSamplingConfig(Strict):
    """DAPO dynamic sampling: drop groups whose rewards all agree, draw more prompts until the step is full."""

    enabled: bool = False
    max_rounds: int = Field(3, gt=0, description="generation rounds per step, the first included")


class OverlongConfig(Strict):
    """DAPO's handling of completions that reach the token limit."""

    filter: bool = Field(False, description="truncated completions carry no loss")
    soft_penalty_tokens: int = Field(0, ge=0, description="L_cache: linear length penalty in the last N tokens (0 = off)")
    penalty: float = Field(1.0, ge=0, description="the penalty at the limit (subtracted from the reward)")


class MismatchCorrectionConfig(Strict):
    """Importance weights between the trainer's pi_old and the generator's log-probs (`kind` is registered)."""

    kind: str = Field("none", description="a registered mismatch correction: none | tis | mis | icepop")
    level: Literal["token", "sequence"] = "token"
    cap: float = Field(2.0, gt=0, description="upper bound of the weight (tis truncates, mis/icepop mask above it)")
    lower: float = Field(0.5, ge=0, description="icepop: lower bound of the kept weights")


class GRPOConfig(Strict):
    """The GRPO algorithm. Defaults follow DeepSeekMath/DeepScaleR. `advantage`, `policy_loss`, `loss_agg` and
    `mismatch_correction.kind` name registered options (checked against the plugins when the run is resolved)."""

    prompts_per_step: int = Field(128, gt=0)
    num_generations: int = Field(8, gt=0, description="G: completions per prompt")
    mini_batch_size: int = Field(64, gt=0, description="sequences per optimizer step")
    epochs_per_step: int = Field(1, gt=0, description="passes over the step's rollouts")
    advantage: str = Field("grpo", description="a registered advantage estimator: grpo | rloo | reinforce_pp")
    baseline: Literal["mean", "leave_one_out"] = Field("mean", description="the grpo estimator's baseline")
    normalize_std: bool = Field(True, description="the grpo estimator divides by the group std (false: Dr. GRPO)")
    policy_loss: str = Field("ppo_clip", description="a registered policy loss: ppo_clip | gspo | gspo_token | cispo")
    loss_agg: str = Field("token", description="a registered loss aggregation: token | sequence | dr_grpo")
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0)
    dual_clip: float | None = Field(None, gt=1.0, description="dual-clip constant c > 1 (None = off; ppo_clip)")
    kl_coef: float = Field(0.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1
    max_new_tokens: int = Field(256, gt=0)
    max_staleness: int = Field(
        0, ge=0, description="0 = synchronous steps; k >= 1 = rollouts for the next steps are generated while the "
        "trainer trains, and a sample of policy version v is trained at step s only if s - v <= k",
    )
    old_logprobs: Literal["auto", "recompute", "from_train_forward"] = Field(
        "auto",
        description="pi_old: recompute = a log-probs pass of the trainer before the update (any mini-batching); "
        "from_train_forward = the detached log-probs of the training forward itself, which are pi_old exactly when "
        "the step makes one optimizer step (mini_batch_size = prompts_per_step x num_generations, epochs_per_step "
        "1): saves that pass (as TRL does on-policy); a mismatch correction's weights then come from that forward too. "
        "auto: from_train_forward where it is exact (one optimizer step per GRPO step), else recompute",
    )
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)
    mismatch_correction: MismatchCorrectionConfig = Field(default_factory=MismatchCorrectionConfig)

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        total = self.prompts_per_step * self.num_generations
        if total % self.mini_batch_size:
            raise ValueError(
                f"mini_batch_size ({self.mini_batch_size}) must divide prompts_per_step x num_generations ({total})"
            )
        if self.old_logprobs == "from_train_forward":
            problems = []
            if not self.one_optimizer_step:
                problems.append(
                    f"one optimizer step per GRPO step (mini_batch_size = prompts_per_step x num_generations = "
                    f"{total} and epochs_per_step 1; got mini_batch_size {self.mini_batch_size}, epochs_per_step "
                    f"{self.epochs_per_step}): after the first update the policy is no longer pi_old"
                )
            if problems:
                raise ValueError(
                    "grpo.old_logprobs=from_train_forward needs " + "; and ".join(problems)
                    + ". Use grpo.old_logprobs=recompute"
                )
        return self

    @property
    def one_optimizer_step(self) -> bool:
        """One optimizer step per GRPO step: the policy of the training forward is pi_old."""
        return self.mini_batch_size == self.prompts_per_step * self.num_generations and self.epochs_per_step == 1

    @property
    def pi_old_from_train_forward(self) -> bool:
        """old_logprobs resolved: True when pi_old is the training forward's own detached log-probs (no pass)."""
        if self.old_logprobs == "auto":
            return self.one_optimizer_step
        return self.old_logprobs == "from_train_forward"


class RolloutConfig(Strict):
    """Limits of multi-turn episodes (environments with `start_episode`); single-turn rollouts ignore them.

    Run-level, not per environment: they bound what a rollout may cost (turns, tokens, waiting on the
    environment) whatever the environment's own rules are; an environment may end its episodes sooner."""

    max_turns: int = Field(8, gt=0, description="model turns per episode; one more observation ends it: 'max_turns'")
    max_tokens: int | None = Field(
        None, gt=0, description="prompt + every turn and observation, per episode (null = model.max_seq_len); "
        "no room for another turn ends it: 'token_budget'",
    )
    env_timeout_s: float = Field(
        30.0, gt=0, description="one start_episode/step call; a longer one ends its episode: 'env_timeout'"
    )
    env_workers: int = Field(8, gt=0, description="threads running environment calls")


class ValidationConfig(Strict):
    period: int = Field(0, ge=0, description="validate every N steps (0 = never; also at the end if > 0)")
    samples_per_problem: int = Field(1, gt=0, description="k for avg@k / pass@k")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_problems: int | None = Field(None, gt=0)
    max_new_tokens: int | None = Field(None, gt=0, description="default: grpo.max_new_tokens")


class CheckpointConfig(Strict):
    period: int = Field(0, ge=0, description="save every N steps (0 = only at the end)")
    keep_best: int = Field(1, ge=0, description="best checkpoints kept by `metric`, besides the latest")
    metric: str = "val/accuracy"
    mode: Literal["max", "min"] = "max"
    resume: bool = Field(True, description="continue from the latest checkpoint in output_dir if there is one")
    export_hf: bool = Field(True, description="export the final policy as a Hugging Face folder")


class LoggingConfig(Strict):
    tensorboard: bool = True
    wandb_project: str | None = None
    progress: bool = True
    rollouts_per_step: int = Field(2, ge=0, description="prompts per step whose completions go to rollouts.jsonl (0 = off)")
    plot: bool = Field(True, description="write metrics.png (rlx plot) at the end of a run, when matplotlib is installed")


class RayConfig(Strict):
    """Options that only the Ray cluster uses (`cluster.ray.*`)."""

    address: str | None = Field(None, description="Ray address; default: RAY_ADDRESS or a new local Ray")
    placement: Literal["colocated", "separate"] = "colocated"
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, ge=0)
    weight_transport: Literal["auto", "object-store", "broadcast"] = Field(
        "auto",
        description="how trainer rank 0's weights reach the replicas: broadcast (NCCL on GPUs, gloo on CPUs) or the "
        "object store; auto: NCCL broadcast for separate GPU pools, else the object store",
    )


_MOVED_TO_RAY = ("address", "placement", "strategy", "gpus_per_worker", "cpus_per_worker")


class ClusterConfig(Strict):
    """Where the components run: `local` (this host) or `ray`; what both honour is here, Ray's own under `ray`."""

    kind: Literal["local", "ray"] = "local"
    trainer_workers: int = Field(1, gt=0, description="trainer processes (one torch.distributed rank each)")
    generator_replicas: int = Field(1, gt=0)
    timeout_s: float = Field(1800.0, gt=0, description="a remote call (or trainer rank) taking longer fails the run")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in _MOVED_TO_RAY if k in data]
            if moved:
                raise ValueError(
                    f"{', '.join('cluster.' + k for k in moved)} moved to the Ray section: use "
                    f"{', '.join('cluster.ray.' + k for k in moved)}"
                )
        return data


DEFAULT_COMPONENTS = {"generator": "hf", "trainer": "fsdp", "env": "math"}


class RunConfig(Strict):
    name: str = "rlx"
    output_dir: str = "runs/default"
    seed: int = 0
    steps: int = Field(60, gt=0, description="GRPO steps")
    model: ModelConfig = Field(default_factory=ModelConfig)
    generator: ComponentSection = Field(default_factory=lambda: ComponentSection(name=DEFAULT_COMPONENTS["generator"]))
    trainer: ComponentSection = Field(default_factory=lambda: ComponentSection(name=DEFAULT_COMPONENTS["trainer"]))
    env: ComponentSection = Field(default_factory=lambda: ComponentSection(name=DEFAULT_COMPONENTS["env"]))
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)


# ---------------------------------------------------------------------------------------------- loading


def _names_another_component(key: str, base: Any, over: Any) -> bool:
    """A recipe that switches `generator: {name: ...}` (etc.) to another component replaces the whole section:
    the inherited options belonged to the other component."""
    if key not in ("generator", "trainer", "env") or not isinstance(over, dict | str):
        return False
    name = over if isinstance(over, str) else over.get("name")
    old = base if isinstance(base, str) else base.get("name") if isinstance(base, dict) else None
    return name is not None and old is not None and name != old


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if _names_another_component(key, out.get(key), value):
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a recipe; `defaults: [a.yaml, b.yaml]` (paths relative to the file) are merged first, in order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config defaults form a cycle: {' -> '.join(str(p) for p in (*_seen, resolved))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc})") from exc
    if data is None:
        raise ConfigError(
            f"{path} is empty: a recipe is a mapping of settings (e.g. `steps: 100`, `defaults: [base.yaml]`). "
            "Without --config, rlx runs the embedded default recipe"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of settings (key: value lines), but the file holds a "
            f"{type(data).__name__} ({_shorten(data)})"
        )
    defaults = data.pop("defaults", []) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: `defaults` must be a recipe path or a list of them, got {_shorten(defaults)}")
    merged: dict[str, Any] = {}
    for parent in defaults:
        merged = _merge(merged, load_yaml(path.parent / parent, (*_seen, resolved)))
    return _merge(merged, data)


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_value(raw: str) -> Any:
    """YAML scalars/lists, plus floats YAML 1.1 reads as strings (`1e-6`)."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_override(data: dict[str, Any], override: str) -> None:
    """`a.b.c=value`: value is parsed as YAML (numbers, booleans, lists, null)."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} must look like key.sub=value (e.g. grpo.num_generations=16)")
    value = parse_value(raw)
    if key in SHORTHAND:  # `model=path`, `generator=vllm`: set the section's main field, keep its other options
        section = data.get(key)
        data[key] = {**(section if isinstance(section, dict) else {}), SHORTHAND[key]: value}
        return
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif node is data and part in SHORTHAND and isinstance(child, str):
            child = node[part] = {SHORTHAND[part]: child}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: '{part}' is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value


# sections that may be given as one value: `model: <path>`, `generator: vllm`
SHORTHAND = {"model": "path", "generator": "name", "trainer": "name", "env": "name"}


def _normalise_sections(data: dict[str, Any]) -> None:
    """`generator: vllm` is short for `generator: {name: vllm}`; a section without a name gets the default."""
    for key, main in SHORTHAND.items():
        if isinstance(data.get(key), str):
            data[key] = {main: data[key]}
    for kind, default in DEFAULT_COMPONENTS.items():
        if isinstance(data.get(kind), dict):
            data[kind].setdefault("name", default)


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        full = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(config)"
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, err["loc"][:-1])
            allowed = sorted(parent.model_fields) if parent else []
            hint = did_you_mean(str(err["loc"][-1]), allowed)
            lines.append(f"unknown config key '{full}'.{hint} Allowed here: {', '.join(allowed)}")
        else:
            shown = err.get("input")
            shown = "" if isinstance(shown, dict) else f" (got {shown!r})"
            lines.append(f"config key '{full}': {err['msg']}{shown}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        current = field.annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def build_config(
    config_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    generator: str | None = None,
    trainer: str | None = None,
    env: str | None = None,
    warn_dropped: bool = True,
) -> RunConfig:
    """Recipe file (or the defaults) + component choices + dotted overrides -> a validated RunConfig.

    A component choice that differs from the recipe's drops the recipe's options for the other component, with a
    warning unless `warn_dropped` is off (the CLI turns it off for the embedded default recipe, which the user did
    not write: `rlx run --env echo` means the echo environment with its own defaults)."""
    data = load_yaml(config_path) if config_path else {}
    _normalise_sections(data)
    for kind, choice in (("generator", generator), ("trainer", trainer), ("env", env)):
        if choice:
            section = data.setdefault(kind, {})
            if section.get("name") not in (None, choice):
                # the recipe's options were written for another component: they are dropped, out loud
                dropped = sorted(k for k in section if k != "name")
                if dropped and warn_dropped:
                    log.warning(
                        "--%s %s replaces the recipe's %s '%s': its options %s are dropped (set %s options with "
                        "%s.KEY=VALUE)", "env" if kind == "env" else kind, choice, kind, section["name"],
                        ", ".join(dropped), choice, kind,
                    )
                section = data[kind] = {}
            section["name"] = choice
    for override in overrides:
        apply_override(data, override)
    _normalise_sections(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RunConfig)) from exc


def component_config(section: ComponentSection, config_model: type[BaseModel], kind: str) -> BaseModel:
    """Validate a component's section against that component's own Config model."""
    try:
        return config_model.model_validate(section.options())
    except ValidationError as exc:
        msg = format_validation_error(exc, config_model, prefix=f"{kind}.")
        raise ConfigError(f"{msg}\n(options of {kind} '{section.name}': {', '.join(config_model.model_fields) or 'none'})") from exc


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
