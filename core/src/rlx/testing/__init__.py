"""Conformance suites for component authors: a third-party generator passes the same tests as `hf` and `vllm`,
a third-party trainer the same as `fsdp` (`TrainerConformance`), a third-party environment the same as
`math` (`EnvironmentConformance`); both at the end.

Usage, in your plugin's test module (pytest)::

    import pytest
    from rlx.testing import GeneratorConformance

    class TestMyGenerator(GeneratorConformance):
        @pytest.fixture(scope="class")
        def make_generator(self):
            from my_plugin.engine import MyGenerator, MyConfig
            return lambda model_spec: MyGenerator(MyConfig(), model=model_spec, seed=0)

That is all: the subclass inherits every test. The suite builds three tiny random Qwen2 models on the
fly (no downloads; shared tokenizer, head_dim 64, fp32 safetensors) and calls `make_generator` ONCE per
class, with `ModelSpec(base_model, dtype=model_dtype)`; other weights reach the engine only through
`update_weights`, so one engine instance serves every test.

What is checked: result shapes and types (n per prompt, len(logprobs) == len(token_ids), finish reasons,
max_new_tokens, prompt order), n samples differ, seeds reproduce, greedy is deterministic and is the
reference argmax, `stop_token_ids` and EOS end completions (stop token kept), per-token logprobs agree with
the reference on softmax(logits / T) before top-k/top-p (mean exp|delta| < 1.01, max |delta| < 0.05 nats),
`update_weights` consumes its iterator once and outputs follow the new weights, sleep/wake_up keep them; and the
streaming side (the plugin's own StreamingGenerator methods, else `rlx.generation.as_streaming`'s adapter):
streamed results equal the batch path, per-request max_new_tokens, ids right in any finishing order, versions
reported after `update_weights(version=...)`, refusal to serve after an incomplete push, and (when
`partial_rollouts`) a request in flight across a push continuing under the new weights.

The logprob reference is the builtin `fsdp` trainer's `logprobs` (fp32 on CPU, in a subprocess) when
`rlx.builtin.fsdp_trainer` is importable, else a plain transformers forward; the test prints which.
Engines that cannot run fp32 may override class attributes, stating why in a comment: `model_dtype`,
`logprob_mismatch_tolerance`, `logprob_max_abs_diff`, `greedy_tolerance`, `reference`.
Helpers for your own tests: `make_tiny_model`, `make_tiny_models`, `iter_safetensors`.

A trainer package does the same with `TrainerConformance` and a `make_trainer` fixture (a callable taking the
ModelSpec; use a learning rate that moves the weights in one step, e.g. 1e-3). It checks: logprobs shape, dtype,
alignment to input_ids and masking (exactly 0 outside completion_mask) against a plain fp32 transformers forward
at two temperatures, independence from the other rows of the batch, that train_step moves the weights and
reports finite loss/grad_norm, that named_weights are HF names and full tensors that load into a transformers
model and reproduce the trainer's logprobs, that a checkpoint resumes bit-exactly, and that export_hf loads with
transformers. Class attributes to override (say why): `model_dtype`, `logprob_atol`, `checkpoint_atol`,
`max_seq_len`.

An environment plugin subclasses `EnvironmentConformance` the same way, with a `make_environment` fixture
returning `seed -> Environment`::

    class TestMyEnvironment(EnvironmentConformance):
        @pytest.fixture(scope="class")
        def make_environment(self):
            from my_plugin.env import MyEnvironment, MyConfig
            return lambda seed: MyEnvironment(MyConfig(), seed=seed)

It checks: problems are typed Problems with chat messages, ids unique across both splits, picklable, the same
for the same seed (across calls and instances); `score` returns one Score per completion (finite float reward,
non-empty status, `correct` a bool or None), keeps the order of a shuffled batch, does not call an empty
completion solved, never raises on garbage (empty, huge, control bytes, random unicode, unbalanced markup) and
returns a batch of it within `score_time_limit_s`; `metadata['solution']` scores as solved and
`metadata['distractors']` do not (when present: the embedded tiny model's warm-up relies on both).
Class attributes to override, stating why: `seed`, `max_problems`, `score_time_limit_s`.
A multi-turn environment (with `start_episode`) also gets the episode tests (`rlx.testing.episodes`): steps answer
garbage turns with a valid Observation or Score promptly, concurrent episodes match sequential ones, a replayed
`metadata['demonstration']` solves and dialogue distractors do not (`max_episode_problems`, `max_turns`,
`step_time_limit_s`). Single-turn environments skip them, saying so.
"""

from rlx.testing.environment import EnvironmentConformance, check_scores, garbage_completions
from rlx.testing.fixtures import TinyModels, iter_safetensors, make_tiny_model, make_tiny_models
from rlx.testing.generator import GeneratorConformance
from rlx.testing.trainer import TrainerConformance

__all__ = [
    "EnvironmentConformance",
    "GeneratorConformance",
    "TinyModels",
    "TrainerConformance",
    "check_scores",
    "garbage_completions",
    "iter_safetensors",
    "make_tiny_model",
    "make_tiny_models",
]
