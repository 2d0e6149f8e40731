"""Conformance suites for component authors: a third-party generator passes the same tests as `hf` and `vllm`,
a third-party trainer the same as `fsdp`.

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
`update_weights` consumes its iterator once and outputs follow the new weights, sleep/wake_up keep them.

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
"""

from rlx.testing.fixtures import TinyModels, iter_safetensors, make_tiny_model, make_tiny_models
from rlx.testing.generator import GeneratorConformance
from rlx.testing.trainer import TrainerConformance

__all__ = [
    "GeneratorConformance",
    "TinyModels",
    "TrainerConformance",
    "iter_safetensors",
    "make_tiny_model",
    "make_tiny_models",
]
