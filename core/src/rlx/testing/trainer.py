"""`TrainerConformance`: the pytest suite every `Trainer` implementation passes (see `rlx.testing`).

Each test builds a fresh trainer from `TinyModels.base` (so tests may run in any order) and closes it before it
returns. The reference is a plain transformers forward in fp32 on CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from rlx.grpo.losses import policy_loss
from rlx.interfaces import ModelSpec, TokenBatch, TrainBatch, Trainer
from rlx.testing.fixtures import TinyModels, session_tiny_models

MakeTrainer = Callable[[ModelSpec], Trainer]

# (prompt tokens, completion tokens) per row: different lengths, so rows are right-padded
_ROWS = ((5, 9), (3, 4), (8, 12), (4, 1), (6, 7))
_TEMPERATURES = (1.0, 0.7)


def hf_logprobs(model_dir: str, batch: TokenBatch, temperature: float = 1.0) -> torch.Tensor:
    """(B, T) fp32 log p(input_ids[b, t] | input_ids[b, :t]) on logits / T from a plain transformers forward,
    0 outside completion_mask: what `Trainer.logprobs` must return."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _model_logprobs(model, batch, temperature)


@torch.no_grad()
def _model_logprobs(model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float() / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(logp, (1, 0)) * batch.completion_mask


def make_train_batch(model_dir: str, vocab_size: int, seed: int = 0) -> TrainBatch:
    """Right-padded rows of random tokens (`_ROWS` lengths), token-mean loss weights, advantages of both signs and
    pi_old = the base model's own log-probabilities (ratio 1: every completion token gets a gradient)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(p + c for p, c in _ROWS)
    input_ids = torch.zeros(len(_ROWS), width, dtype=torch.long)
    attention_mask = torch.zeros(len(_ROWS), width, dtype=torch.long)
    completion_mask = torch.zeros(len(_ROWS), width, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(_ROWS):
        # ids from 3 up: clear of the pad / special tokens
        input_ids[row, : prompt + completion] = torch.randint(3, vocab_size, (prompt + completion,), generator=gen)
        attention_mask[row, : prompt + completion] = 1
        completion_mask[row, prompt : prompt + completion] = True
    batch = TokenBatch(input_ids, attention_mask, completion_mask)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        old_logprobs=hf_logprobs(model_dir, batch),
        advantages=torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0]),
        loss_weights=completion_mask.float() / completion_mask.sum(),  # token mean
    )


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().float().cpu().clone() for name, tensor in trainer.named_weights()}


def _rows(batch: TrainBatch, rows: list[int]) -> TrainBatch:
    index = torch.tensor(rows)
    return TrainBatch(**{k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()})


class TrainerConformance:
    """Subclass in your test module and override the `make_trainer` fixture.

    `make_trainer(model_spec)` builds your trainer for a tiny fp32 Qwen2 model; give it a learning rate large
    enough to move the weights visibly in one step (e.g. 1e-3) and no reference model. Class attributes a plugin
    may override (say why in a comment; the defaults fit an fp32 trainer):
    """

    #: dtype of the ModelSpec the trainer is built with (the suite's weights are fp32).
    model_dtype: str = "float32"
    #: max |trainer logprob - transformers logprob| on completion tokens (nats).
    logprob_atol: float = 1e-4
    #: max |difference| of weights after resuming from a checkpoint and repeating the same step (0: bit-exact).
    checkpoint_atol: float = 0.0
    #: the longest sequence the suite sends (ModelSpec.max_seq_len).
    max_seq_len: int = 64

    # ------------------------------------------------------------------------------------ fixtures

    @pytest.fixture(scope="class")
    def make_trainer(self) -> MakeTrainer:
        """Override: return a callable building your trainer for a ModelSpec."""
        pytest.fail(f"{type(self).__name__} must override the `make_trainer` fixture (see rlx.testing)")

    @pytest.fixture(scope="class")
    def tiny_models(self, tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
        return session_tiny_models(tmp_path_factory)

    @pytest.fixture(scope="class")
    def model_spec(self, tiny_models: TinyModels) -> ModelSpec:
        return ModelSpec(tiny_models.base, dtype=self.model_dtype, max_seq_len=self.max_seq_len)  # type: ignore[arg-type]

    @pytest.fixture(scope="class")
    def vocab_size(self, tiny_models: TinyModels) -> int:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(tiny_models.base).vocab_size)

    @pytest.fixture(scope="class")
    def batch(self, tiny_models: TinyModels, vocab_size: int) -> TrainBatch:
        return make_train_batch(tiny_models.base, vocab_size)

    @pytest.fixture(scope="class")
    def loss_fn(self) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        return functools.partial(policy_loss, clip_low=0.2, clip_high=0.2)

    @pytest.fixture
    def trainer(self, make_trainer: MakeTrainer, model_spec: ModelSpec) -> Iterator[Trainer]:
        trainer = make_trainer(model_spec)
        yield trainer
        trainer.close()

    # ------------------------------------------------------------------------------------ logprobs

    def test_satisfies_protocol(self, trainer: Trainer) -> None:
        assert isinstance(trainer, Trainer)

    @pytest.mark.parametrize("temperature", _TEMPERATURES)
    def test_logprobs_are_aligned_and_masked(
        self, trainer: Trainer, batch: TrainBatch, tiny_models: TinyModels, temperature: float
    ) -> None:
        """(B, T) float32 on logits / T, out[b, t] scores input_ids[b, t]; exactly 0 outside completion_mask."""
        got = trainer.logprobs(batch, temperature=temperature).cpu()
        assert got.shape == batch.input_ids.shape and got.dtype == torch.float32
        assert torch.equal(got[~batch.completion_mask], torch.zeros(int((~batch.completion_mask).sum())))
        expected = hf_logprobs(tiny_models.base, batch, temperature)
        delta = (got - expected)[batch.completion_mask].abs().max().item()
        assert delta <= self.logprob_atol, f"max |logprob - transformers| = {delta:.3g} at T={temperature}"
        assert (got[batch.completion_mask] < 0).all()

    def test_logprobs_do_not_depend_on_the_other_rows(self, trainer: Trainer, batch: TrainBatch) -> None:
        """A row scores the same alone, in another order, or beside other rows (padding, packing, splits)."""
        together = trainer.logprobs(batch).cpu()
        order = [3, 0, 4, 2, 1]
        shuffled = trainer.logprobs(_rows(batch, order)).cpu()
        alone = trainer.logprobs(_rows(batch, [2])).cpu()
        torch.testing.assert_close(shuffled, together[order], atol=self.logprob_atol, rtol=0)
        torch.testing.assert_close(alone, together[2:3, : alone.shape[1]], atol=self.logprob_atol, rtol=0)

    # ------------------------------------------------------------------------------------ training

    def test_train_step_changes_the_weights_and_reports_finite_metrics(
        self, trainer: Trainer, batch: TrainBatch, loss_fn: Callable
    ) -> None:
        before = _weights(trainer)
        logprobs_before = trainer.logprobs(batch).cpu()
        metrics = trainer.train_step(batch, loss_fn)
        assert {"loss", "grad_norm"} <= set(metrics), f"metrics must include loss and grad_norm: {sorted(metrics)}"
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
        assert metrics["grad_norm"] > 0
        after = _weights(trainer)
        assert after.keys() == before.keys()
        moved = max((after[name] - before[name]).abs().max().item() for name in before)
        assert moved > 0, "train_step did not change any weight"
        assert not torch.equal(trainer.logprobs(batch).cpu(), logprobs_before), "logprobs did not follow the step"

    def test_named_weights_load_into_transformers(
        self, trainer: Trainer, batch: TrainBatch, loss_fn: Callable, tiny_models: TinyModels
    ) -> None:
        """HF names, full (unsharded) tensors, each once; loaded into a transformers model they give the trainer's
        own log-probabilities (after a step, so they are not just the checkpoint's)."""
        from transformers import AutoModelForCausalLM

        trainer.train_step(batch, loss_fn)
        names = [name for name, _ in trainer.named_weights()]
        assert len(names) == len(set(names)), "a weight was yielded twice"
        weights = _weights(trainer)
        model = AutoModelForCausalLM.from_pretrained(tiny_models.base, dtype=torch.float32).eval()
        state = model.state_dict()
        unknown = sorted(set(weights) - set(state))
        assert not unknown, f"not HF parameter names of this model: {unknown[:5]}"
        for name, tensor in weights.items():
            assert tensor.shape == state[name].shape, f"{name}: {tuple(tensor.shape)} is not the full shape"
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        missing = set(state) - set(weights) - tied
        assert not missing, f"weights never yielded: {sorted(missing)[:5]}"
        model.load_state_dict(weights, strict=False)
        expected = trainer.logprobs(batch).cpu()
        torch.testing.assert_close(_model_logprobs(model, batch), expected, atol=self.logprob_atol, rtol=0)

    def test_checkpoint_round_trip_continues_identically(
        self,
        make_trainer: MakeTrainer,
        model_spec: ModelSpec,
        batch: TrainBatch,
        loss_fn: Callable,
        tmp_path: Path,
    ) -> None:
        """Save after one step; a fresh trainer that loads it and takes the next step matches the original."""
        second = _rows(batch, [4, 3, 2, 1, 0])
        first = make_trainer(model_spec)
        try:
            first.train_step(batch, loss_fn)
            first.save_checkpoint(str(tmp_path / "ckpt"))
            expected_metrics = first.train_step(second, loss_fn)
            expected = _weights(first)
        finally:
            first.close()
        resumed = make_trainer(model_spec)
        try:
            resumed.load_checkpoint(str(tmp_path / "ckpt"))
            got_metrics = resumed.train_step(second, loss_fn)
            got = _weights(resumed)
        finally:
            resumed.close()
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=self.checkpoint_atol, rtol=0)
        assert got_metrics["loss"] == pytest.approx(expected_metrics["loss"], rel=1e-6, abs=1e-9)

    def test_export_hf_loads_with_transformers(
        self, trainer: Trainer, batch: TrainBatch, loss_fn: Callable, tmp_path: Path
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        trainer.train_step(batch, loss_fn)
        expected = trainer.logprobs(batch).cpu()
        trainer.export_hf(str(tmp_path / "hf"))
        folder = tmp_path / "hf"
        assert (folder / "config.json").is_file() and (folder / "generation_config.json").is_file()
        assert list(folder.glob("*.safetensors")), "export_hf must write safetensors"
        assert AutoTokenizer.from_pretrained(str(folder)).eos_token is not None
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        torch.testing.assert_close(_model_logprobs(model, batch), expected, atol=self.logprob_atol, rtol=0)
