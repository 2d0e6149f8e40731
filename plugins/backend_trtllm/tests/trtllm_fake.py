"""A fake `tensorrt_llm.LLM` (+ SamplingParams) for the adapter tests: the documented inputs and outputs, a toy model.

Boundary mimicked, as read from NVIDIA/TensorRT-LLM (1.2 line, main branch files):
- `LLM.generate(inputs=[[int]], sampling_params=[SamplingParams], use_tqdm=False)` -> list[RequestOutput] in
  input order; `RequestOutput.outputs[0]` is a CompletionOutput(index, text, token_ids, cumulative_logprob,
  logprobs, finish_reason in {"stop", "length", ...}, stop_reason) (tensorrt_llm/llmapi/llm.py,
  tensorrt_llm/executor/result.py).
- SamplingParams is a keyword-only dataclass (unknown key -> TypeError): max_tokens, temperature, top_p, top_k
  (0 = all), seed, end_id, pad_id, stop_token_ids, include_stop_str_in_output, detokenize, logprobs,
  logprobs_mode ("raw" | "processed") (tensorrt_llm/sampling_params.py; tests/unittest/llmapi/test_llm_pytorch.py).
- logprobs=K -> per token {token_id: Logprob(logprob, rank)} holding the sampled token; "raw" =
  log_softmax(raw logits), "processed" = after temperature and top-k/top-p, renormalised over kept tokens
  (PRs #9675 "processed logprobs for TorchSampler", #12514 "raw is the PyTorch backend default").
- stop token ids end a request with finish_reason "stop"; kept in token_ids only with include_stop_str_in_output.
- `LLM._collective_rpc(method, args=(...))` -> one result per worker rank: "update_weights" with
  {device_uuid: base64 pickled [(name, handle)]} per bucket then None to finalize (tensorrt_llm/llmapi/rlhf_utils.py,
  verl trtllm_rollout.py); "sleep"/"wakeup" with memory tags (tensorrt_llm/_torch/async_llm.py, verl).
  Here the "handle" is the tensor itself (CPU test: no CUDA IPC); `fake_handle_encoder` produces that form.
"""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch

VOCAB = 16
EOS = 15
MEMORY_TAGS = {"sampler", "drafter", "guided_decoder", "spec_resource_manager", "model_extra", "executor_extra",
               "model", "draft_model", "kv_cache"}  # fmt: skip


@dataclass(slots=True, kw_only=True)
class FakeSamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    logprobs: int | None = None
    logprobs_mode: str = "raw"
    detokenize: bool = True


@dataclass(slots=True, kw_only=True)
class OldFakeSamplingParams:
    """A tensorrt_llm before logprobs_mode (e.g. 1.0): same fields minus that one."""

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    logprobs: int | None = None
    detokenize: bool = True


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


def fake_handle_encoder(bucket: list[tuple[str, torch.Tensor]], uuids) -> tuple[dict[str, str], list[Any]]:
    """The payload's shape without CUDA IPC: the pickled list holds (name, tensor) instead of (name, handle)."""
    blob = base64.b64encode(pickle.dumps([(name, t.clone()) for name, t in bucket])).decode("ascii")
    return {uuid: blob for uuid in uuids}, []


class FakeLLM:
    """Toy model: next-token logits = W[last token], W: (VOCAB, VOCAB) float32 named "lm_head.weight"."""

    def __init__(self, tp_size: int = 1, weight: torch.Tensor | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        self.weights = {"lm_head.weight": weight if weight is not None else torch.randn(VOCAB, VOCAB, generator=gen)}
        self.uuids = [f"GPU-fake-{rank}" for rank in range(tp_size)]
        self.released: set[str] = set()
        self.rpcs: list[tuple[str, Any]] = []
        self.pending: dict[str, torch.Tensor] = {}
        self.finalized = 0
        self.shutdowns = 0
        self.force_finish: str | None = None
        self.float_logprobs = False

    def logits(self, last: int) -> torch.Tensor:
        return self.weights["lm_head.weight"][last].float()

    def generate(self, inputs, sampling_params=None, use_tqdm=True, **kwargs):
        assert isinstance(inputs, list) and isinstance(inputs[0], list)
        assert isinstance(sampling_params, list) and len(sampling_params) == len(inputs)
        if self.released:
            raise RuntimeError("fake LLM: generate while memory is released")
        return [self._one(k, ids, sp) for k, (ids, sp) in enumerate(zip(inputs, sampling_params, strict=True))]

    def _one(self, k: int, ids: list[int], sp: FakeSamplingParams) -> RequestOutput:
        temperature = 1.0 if sp.temperature is None else sp.temperature
        greedy = sp.temperature is None and sp.top_p is None and sp.top_k is None or temperature == 0.0
        top_k, top_p = sp.top_k or 0, 1.0 if sp.top_p is None else sp.top_p
        gen = torch.Generator().manual_seed(sp.seed or 0)
        stop = set(sp.stop_token_ids or [])
        if sp.end_id is not None and sp.end_id >= 0:
            stop.add(sp.end_id)
        tokens: list[int] = []
        logprobs: list[Any] = []
        reason, stop_reason, last = "length", None, ids[-1]
        for _ in range(sp.max_tokens):
            logits = self.logits(last)
            if greedy:
                token = int(torch.argmax(logits))
                processed = torch.log_softmax(logits, -1)
            else:
                probs = torch.softmax(logits / temperature, -1)
                keep = torch.ones(VOCAB, dtype=torch.bool)
                order = torch.argsort(probs, descending=True)
                if 0 < top_k < VOCAB:
                    keep[order[top_k:]] = False
                if top_p < 1.0:
                    cumulative = torch.cumsum(probs[order], 0)
                    keep[order[(cumulative - probs[order]) >= top_p]] = False
                filtered = torch.where(keep, probs, torch.zeros_like(probs))
                filtered = filtered / filtered.sum()
                token = int(torch.multinomial(filtered, 1, generator=gen))
                processed = torch.log(filtered)
            raw = torch.log_softmax(logits, -1)
            value = float((processed if getattr(sp, "logprobs_mode", "raw") == "processed" else raw)[token])
            if token in stop:
                reason, stop_reason = "stop", token
                if sp.include_stop_str_in_output:
                    tokens.append(token)
                    logprobs.append(value if self.float_logprobs else {token: Logprob(value, 1)})
                break
            tokens.append(token)
            logprobs.append(value if self.float_logprobs else {token: Logprob(value, 1)})
            last = token
        if self.force_finish is not None:
            reason = self.force_finish
        out = CompletionOutput(index=0, token_ids=tokens, logprobs=logprobs if sp.logprobs is not None else [],
                               finish_reason=reason, stop_reason=stop_reason)  # fmt: skip
        return RequestOutput(request_id=k, prompt_token_ids=ids, outputs=[out])

    def _collective_rpc(self, method, args=(), kwargs=None, non_block=False, unique_reply_rank=None, target_ranks=None):
        self.rpcs.append((method, args))
        if method == "rlx_device_uuid":
            return list(self.uuids)
        if method == "update_weights":
            (payload,) = args
            if "model" in self.released:
                raise RuntimeError("fake LLM: weights are released")
            if payload is None:  # finalize
                self.weights.update({n: t.to(self.weights[n].dtype) for n, t in self.pending.items()})
                self.pending.clear()
                self.finalized += 1
                return [None] * len(self.uuids)
            for uuid in self.uuids:
                if uuid not in payload:
                    raise ValueError(f"Device UUID {uuid} not found in ipc_handles")
                for name, tensor in pickle.loads(base64.b64decode(payload[uuid])):
                    if name not in self.weights:
                        raise KeyError(name)
                    self.pending[name] = tensor
            return [None] * len(self.uuids)
        if method in ("sleep", "wakeup"):
            (tags,) = args
            unknown = set(tags) - MEMORY_TAGS
            if unknown:
                raise ValueError(f"unknown memory tags {unknown}")
            if method == "sleep":
                self.released.update(tags)
            else:
                assert set(tags) <= self.released, f"wakeup of tags never released: {set(tags) - self.released}"
                self.released.difference_update(tags)
            return [None] * len(self.uuids)
        raise ValueError(f"fake LLM: unknown worker method {method}")

    def shutdown(self):
        self.shutdowns += 1
