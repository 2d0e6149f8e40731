"""Reference per-token log-probabilities for generator conformance: the `fsdp` trainer's, or a plain
transformers forward pass. Both run in fp32 on CPU.

Run as `python -m rlx.testing.reference IN.json OUT.json` it computes the trainer's log-probabilities in a
fresh process, so the trainer's torch.distributed group and seeding never meet the engine under test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Literal

import torch

Sequences = Sequence[tuple[Sequence[int], Sequence[int]]]  # (prompt ids, completion ids) pairs
ReferenceKind = Literal["trainer", "transformers"]


def available_reference() -> ReferenceKind:
    """ "trainer" when the builtin fsdp trainer can be imported here, else "transformers"."""
    return "trainer" if importlib.util.find_spec("rlx.builtin.fsdp_trainer") is not None else "transformers"


def _right_padded(sequences: Sequences, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask (B, T) int64 and completion_mask (B, T) bool, right-padded."""
    width = max(len(p) + len(c) for p, c in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(sequences):
        ids = [*prompt, *completion]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        completion_mask[row, len(prompt) : len(ids)] = True
    return input_ids, attention_mask, completion_mask


def _split(out: torch.Tensor, sequences: Sequences) -> list[list[float]]:
    """(B, T) aligned log-probabilities -> one list per completion."""
    return [out[row, len(p) : len(p) + len(c)].tolist() for row, (p, c) in enumerate(sequences)]


@torch.no_grad()
def transformers_scores(model_dir: str, sequences: Sequences, temperature: float = 1.0) -> torch.Tensor:
    """(B, T, V) fp32 log-softmax(logits / temperature), aligned to input_ids: [b, t] predicts token t.

    Right padding leaves the real positions untouched (causal attention). Position 0 is zeros.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids, attention_mask, _ = _right_padded(sequences)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature  # (B, T, V)
    scores = torch.zeros_like(logits)
    scores[:, 1:] = logits[:, :-1].log_softmax(dim=-1)
    return scores


def transformers_logprobs(model_dir: str, sequences: Sequences, temperature: float = 1.0) -> list[list[float]]:
    """log p(completion[i] | prompt, completion[:i]) under softmax(logits / temperature), plain HF forward."""
    input_ids, _, _ = _right_padded(sequences)
    scores = transformers_scores(model_dir, sequences, temperature)
    return _split(scores.gather(-1, input_ids[..., None]).squeeze(-1), sequences)


def greedy_margins(model_dir: str, sequences: Sequences) -> list[list[float]]:
    """Per completion token: max_v logp(v) - logp(token) under the plain HF model (0 = the argmax token)."""
    input_ids, _, _ = _right_padded(sequences)
    scores = transformers_scores(model_dir, sequences)
    margins = scores.max(dim=-1).values - scores.gather(-1, input_ids[..., None]).squeeze(-1)
    return _split(margins, sequences)


def trainer_logprobs(model_dir: str, jobs: Sequence[tuple[Sequences, float]]) -> list[list[list[float]]]:
    """The fsdp trainer's `logprobs` (fp32, CPU, one rank) for each (sequences, temperature) job, computed in
    one subprocess (building the trainer costs seconds; do all jobs at once)."""
    with tempfile.TemporaryDirectory(prefix="rlx-reference-") as tmp:
        request, answer = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(request, "w") as f:
            json.dump({"model_dir": model_dir, "jobs": [[list(s), t] for s, t in jobs]}, f)
        done = subprocess.run(
            [sys.executable, "-m", "rlx.testing.reference", request, answer],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the fsdp trainer reference failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        with open(answer) as f:
            return json.load(f)


def reference_logprobs(
    kind: ReferenceKind, model_dir: str, jobs: Sequence[tuple[Sequences, float]]
) -> list[list[list[float]]]:
    """Per job (sequences, temperature): per sequence, the reference logprob of each completion token."""
    if kind == "trainer":
        return trainer_logprobs(model_dir, jobs)
    return [transformers_logprobs(model_dir, sequences, temperature) for sequences, temperature in jobs]


def _trainer_main(request: str, answer: str) -> None:
    from rlx.builtin.configs import FSDPTrainerConfig
    from rlx.builtin.fsdp_trainer import FSDPTrainer
    from rlx.interfaces import ModelSpec, TokenBatch

    with open(request) as f:
        job = json.load(f)
    config = FSDPTrainerConfig(device="cpu", dtype="float32", micro_batch_size=16)
    trainer = FSDPTrainer(config, model=ModelSpec(job["model_dir"], dtype="float32"), seed=0, with_reference=False)
    results = []
    try:
        for raw, temperature in job["jobs"]:
            sequences = [(p, c) for p, c in raw]
            out = trainer.logprobs(TokenBatch(*_right_padded(sequences)), temperature=temperature)  # (B, T)
            results.append(_split(out, sequences))
    finally:
        trainer.close()
    with open(answer, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    _trainer_main(sys.argv[1], sys.argv[2])
