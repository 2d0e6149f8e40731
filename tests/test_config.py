"""Config: recipes with `defaults:`, dotted overrides, per-component validation, clear errors."""

from __future__ import annotations

import pytest

from rlx.config import RunConfig, apply_override, build_config, load_yaml
from rlx.errors import ConfigError
from rlx.plan import resolve_plan


def test_defaults_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\ngrpo:\n  num_generations: 4\n  prompts_per_step: 8\n  mini_batch_size: 8\n")
    (tmp_path / "child.yaml").write_text("defaults: [base.yaml]\ngrpo:\n  num_generations: 8\nsteps: 7\n")
    cfg = build_config(tmp_path / "child.yaml", ["grpo.clip_high=0.28", "trainer.lr=1e-6", "model.path=x"])
    assert (cfg.seed, cfg.steps, cfg.grpo.num_generations, cfg.grpo.prompts_per_step) == (3, 7, 8, 8)
    assert cfg.grpo.clip_high == 0.28 and cfg.trainer.options() == {"lr": 1e-6} and cfg.model.path == "x"


def test_defaults_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")


def test_unknown_top_level_key_names_it_and_suggests():
    with pytest.raises(ConfigError) as info:
        build_config(None, ["stepz=3"])
    assert "'stepz'" in str(info.value) and "Did you mean 'steps'" in str(info.value)


def test_unknown_nested_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'grpo.num_generation'.*Did you mean 'num_generations'"):
        build_config(None, ["grpo.num_generation=4"])


def test_bad_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"grpo.baseline.*'median'"):
        build_config(None, ["grpo.baseline=median"])


def test_mini_batch_must_divide():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        build_config(None, ["grpo.prompts_per_step=3", "grpo.num_generations=3", "grpo.mini_batch_size=4"])


def test_component_section_validated_against_its_own_config():
    plan = resolve_plan(build_config(None, ["trainer.lr=3e-6", "trainer.micro_batch_size=2"], env="echo")) \
        if _has_echo() else resolve_plan(build_config(None, ["trainer.lr=3e-6", "trainer.micro_batch_size=2"]))
    assert plan.selection.trainer.config.lr == 3e-6
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.lrr'.*Did you mean 'lr'"):
        resolve_plan(build_config(None, ["trainer.lrr=1"]))


def _has_echo() -> bool:
    from rlx.plugins import catalog

    return "echo" in catalog().components["environment"]


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_override({}, "novalue")
    data = {"steps": 3}
    with pytest.raises(ConfigError, match="not a section"):
        apply_override(data, "steps.x=1")


def test_component_name_shorthand(tmp_path):
    (tmp_path / "r.yaml").write_text("generator: hf\n")
    cfg = build_config(tmp_path / "r.yaml")
    assert cfg.generator.name == "hf"


def test_defaults_are_valid():
    assert RunConfig().grpo.num_generations == 8


def test_section_shorthand_overrides_keep_other_options(tmp_path):
    (tmp_path / "r.yaml").write_text("model:\n  path: a\n  max_seq_len: 99\ntrainer:\n  name: fsdp\n  lr: 0.5\n")
    cfg = build_config(tmp_path / "r.yaml", ["model=b", "trainer=fsdp"])
    assert (cfg.model.path, cfg.model.max_seq_len, cfg.trainer.options()) == ("b", 99, {"lr": 0.5})


def test_deepscaler_recipes_carry_published_hyperparameters():
    from .conftest import REPO

    stages = {s: build_config(REPO / f"recipes/deepscaler-1.5b-{s}.yaml") for s in ("8k", "16k", "24k")}
    for cfg in stages.values():
        g = cfg.grpo
        assert cfg.model.path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
        assert (g.prompts_per_step, g.num_generations, g.mini_batch_size) == (128, 8, 64)
        assert (g.baseline, g.normalize_std, g.loss_agg, g.clip_low) == ("leave_one_out", True, "token", 0.2)
        assert (g.temperature, g.top_p) == (1.0, 1.0)
        assert cfg.validation.period == 10 and cfg.validation.samples_per_problem == 16
        assert cfg.checkpoint.period == 10
        t = cfg.trainer.options()
        assert (float(t["weight_decay"]), t["warmup_steps"], t["warmup_start_factor"], t["grad_clip"]) == (0.01, 50, 0.1, 1.0)
    assert [stages[s].model.max_seq_len for s in stages] == [8192, 16384, 24576]
    assert [stages[s].grpo.clip_high for s in stages] == [0.2, 0.28, 0.28]
    assert [stages[s].grpo.kl_coef for s in stages] == [0.0, 0.001, 1e-4]
    assert [float(stages[s].trainer.options()["lr"]) for s in stages] == [2e-6, 2e-6, 5e-7]
    # packed micro-batches whose token budget holds the longest sequence of each stage
    budgets = [stages[s].trainer.options()["max_tokens_per_micro_batch"] for s in stages]
    assert budgets == [16384, 16384, 24576]
    assert all(b >= stages[s].model.max_seq_len for b, s in zip(budgets, stages, strict=True))


def test_choosing_another_generator_drops_the_recipes_options_out_loud(tmp_path, caplog):
    (tmp_path / "r.yaml").write_text("generator:\n  name: vllm\n  gpu_memory_utilization: 0.6\n")
    with caplog.at_level("WARNING", logger="rlx.config"):
        cfg = build_config(tmp_path / "r.yaml", generator="hf")
    assert cfg.generator.name == "hf" and cfg.generator.options() == {}
    assert "gpu_memory_utilization" in caplog.text and "dropped" in caplog.text
    same = build_config(tmp_path / "r.yaml", generator="vllm")
    assert same.generator.options() == {"gpu_memory_utilization": 0.6}


def test_recipe_inheriting_another_component_replaces_its_section(tmp_path):
    (tmp_path / "base.yaml").write_text("generator:\n  name: vllm\n  gpu_memory_utilization: 0.6\ntrainer:\n  lr: 0.5\n")
    (tmp_path / "sgl.yaml").write_text("defaults: [base.yaml]\ngenerator:\n  name: sglang\n  mem_fraction_static: 0.5\n")
    (tmp_path / "same.yaml").write_text("defaults: [base.yaml]\ngenerator:\n  max_model_len: 99\n")
    assert load_yaml(tmp_path / "sgl.yaml")["generator"] == {"name": "sglang", "mem_fraction_static": 0.5}
    assert load_yaml(tmp_path / "same.yaml")["generator"] == {
        "name": "vllm", "gpu_memory_utilization": 0.6, "max_model_len": 99}


def test_sglang_variant_recipe_validates_against_the_sglang_config():
    from rlx.config import component_config
    from rlx.plugins import catalog

    from .conftest import REPO

    cfg = build_config(REPO / "recipes/deepscaler-1.5b-8k-sglang.yaml")
    assert cfg.generator.options() == {"mem_fraction_static": 0.6, "context_length": 8192}
    assert cfg.grpo.prompts_per_step == 128 and float(cfg.trainer.options()["lr"]) == 2e-6
    spec = catalog().get("generator", "sglang")  # the engine itself need not be installed to validate
    assert component_config(cfg.generator, spec.config, "generator").mem_fraction_static == 0.6


def test_algorithm_recipes_dry_run_clean():
    from .conftest import REPO

    dapo = resolve_plan(build_config(REPO / "recipes/dapo-deepscaler-1.5b-8k.yaml"))
    g = dapo.config.grpo
    assert (g.advantage, g.policy_loss, g.loss_agg, g.clip_low, g.clip_high, g.kl_coef) == (
        "grpo", "ppo_clip", "token", 0.2, 0.28, 0.0)
    assert g.dynamic_sampling.enabled and g.overlong.soft_penalty_tokens == 1024 and g.overlong.penalty == 1.0
    assert g.prompts_per_step == 128 and dapo.config.model.max_seq_len == 8192  # the DeepScaleR base
    gspo = resolve_plan(build_config(REPO / "recipes/gspo-deepscaler-1.5b-8k.yaml"))
    g = gspo.config.grpo
    assert (g.policy_loss, g.loss_agg, g.clip_low, g.clip_high) == ("gspo", "sequence", 3e-4, 4e-4)
    assert "policy loss gspo (clip 0.0003/0.0004)" in gspo.describe()
    assert "dynamic sampling on, up to 10 rounds" in dapo.describe()


@pytest.mark.parametrize(("override", "expected"), [
    ("grpo.policy_loss=gsp", r"grpo.policy_loss: unknown policy loss 'gsp'.*Did you mean 'gspo'"),
    ("grpo.advantage=rlo", r"grpo.advantage: unknown advantage estimator 'rlo'.*Did you mean 'rloo'"),
    ("grpo.loss_agg=dr-grpo", r"grpo.loss_agg: unknown loss aggregation 'dr-grpo'.*Did you mean 'dr_grpo'"),
    ("grpo.mismatch_correction.kind=icepob", r"unknown mismatch correction 'icepob'.*Did you mean 'icepop'"),
])
def test_unknown_algorithm_option_names_the_closest(override, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve_plan(build_config(None, [override]))


def test_algorithm_sections_reject_typos():
    with pytest.raises(ConfigError, match=r"grpo.dynamic_sampling.enable'.*Did you mean 'enabled'"):
        build_config(None, ["grpo.dynamic_sampling.enable=true"])
    with pytest.raises(ConfigError, match=r"grpo.mismatch_correction.level"):
        build_config(None, ["grpo.mismatch_correction.level=tokens"])
