"""A fake `sglang.Engine` for the adapter tests: the engine's documented inputs and outputs, a toy model inside.

Boundary mimicked, as read from sglang 0.5.14 (same in 0.5.23):
- `Engine.generate(input_ids=[[int]], sampling_params=[dict], return_logprob=True)` -> list of
  {"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens", "completion_tokens",
  "output_token_logprobs": [(logprob, token_id, None), ...]}} in request order
  (srt/entrypoints/engine.py, srt/managers/tokenizer_manager.py `_handle_batch_output`, `detokenize_logprob_tokens`).
- sampling dicts are `srt/sampling/sampling_params.py` SamplingParams kwargs (unknown key -> TypeError);
  temperature 0 means greedy; top_k -1 means off; `verify()` range checks.
- finish_reason: {"type": "stop", "matched": id} (stop token kept in output_ids), {"type": "length", "length": n},
  {"type": "abort", "message": ...} (srt/managers/schedule_batch.py FINISH_*); the length limit is tested before
  the stop tokens (`Req.update_finish_state`), so a stop token sampled last is reported as "length".
- logprobs: log(softmax(logits / T)) of the sampled token, computed before top-k filtering; greedy:
  log_softmax(logits) (srt/layers/sampler.py `Sampler.forward`).
- `update_weights_from_tensor(named_tensors, load_format=None|"flattened_bucket", flush_cache)` -> (bool, str);
  flattened: one payload per TP rank holding {"flattened_tensor", "metadata"} (srt/managers/tp_worker.py,
  srt/model_executor/model_runner.py `_update_weights_from_flattened_bucket`). The real payload is a
  MultiprocessingSerializer string; here the test encoder hands the deserialized dict straight through.
- `init_weights_update_group(...)`, `update_weights_from_distributed(names, dtypes, shapes, group_name,
  flush_cache, load_format)` -> (bool, str); flattened receive = one uint8 broadcast (model_runner.py).
- `release_memory_occupation(tags)` / `resume_memory_occupation(tags)`: resuming a tag not released fails
  (`offload_tags.remove`, srt/managers/scheduler_components/weight_updater.py); released weights come back
  intact only with `enable_weights_cpu_backup` (torch_memory_saver's CPU backup, model_runner.py `load_model`);
  `flush_cache()`; `shutdown()`.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

import torch

SAMPLING_KEYS = {
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema", "regex",
    "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
    "custom_params", "stream_interval", "logit_bias", "sampling_seed",
}  # fmt: skip

VOCAB = 16
EOS = 15


@dataclass
class FlatMeta:
    """The fields sglang's FlattenedTensorMetadata carries (model_runner reads them by attribute)."""

    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int


def fake_flattened_encoder(bucket: list[tuple[str, torch.Tensor]], tp_size: int) -> list[dict[str, Any]]:
    """Stands in for `sglang_flattened_payload`: the same flat layout, without sglang's serializer."""
    metadata, parts, start = [], [], 0
    for name, tensor in bucket:
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        metadata.append(FlatMeta(name, tensor.shape, tensor.dtype, start, start + flat.numel(), flat.numel()))
        parts.append(flat)
        start += flat.numel()
    data = {"flattened_tensor": torch.cat(parts), "metadata": metadata}
    return [data for _ in range(tp_size)]


def reconstruct(data: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    flat = data["flattened_tensor"]
    return [(m.name, flat[m.start_idx : m.end_idx].view(m.dtype).reshape(m.shape)) for m in data["metadata"]]


class FakeSGLangEngine:
    """Toy model: logits of the next token = W[last token] (W: (VOCAB, VOCAB) float32, name "lm_head.weight")."""

    def __init__(self, tp_size: int = 1, weight: torch.Tensor | None = None, weights_cpu_backup: bool = False) -> None:
        self.tp_size = tp_size
        self.weights_cpu_backup = weights_cpu_backup  # ServerArgs.enable_weights_cpu_backup
        gen = torch.Generator().manual_seed(0)
        self.weights = {"lm_head.weight": weight if weight is not None else torch.randn(VOCAB, VOCAB, generator=gen)}
        self.offload_tags: set[str] = set()
        self.calls: list[tuple[str, Any]] = []
        self.flushes = 0
        self.shutdowns = 0
        self.abort_next: str | None = None
        self.inbox: queue.Queue[torch.Tensor] = queue.Queue()  # filled by FakeBroadcaster
        self.group: dict[str, Any] | None = None
        self.fail_update: str | None = None

    # -- generation -----------------------------------------------------------------------------

    def logits(self, last_token: int) -> torch.Tensor:
        return self.weights["lm_head.weight"][last_token].float()

    def generate(self, input_ids=None, sampling_params=None, return_logprob=False, **kwargs):
        if "weights" in self.offload_tags or "kv_cache" in self.offload_tags:
            raise RuntimeError("fake engine: generate while memory is released")
        assert isinstance(input_ids[0], list), "the adapter sends a batch"
        assert isinstance(sampling_params, list) and len(sampling_params) == len(input_ids)
        self.calls.append(("generate", {"n_requests": len(input_ids)}))
        out = []
        for k, (ids, sp) in enumerate(zip(input_ids, sampling_params, strict=True)):
            unknown = set(sp) - SAMPLING_KEYS
            if unknown:
                raise TypeError(f"SamplingParams.__init__() got unexpected keyword argument(s) {unknown}")
            out.append(self._one(k, ids, dict(sp), return_logprob))
        return out

    def _one(self, k: int, ids: list[int], sp: dict[str, Any], return_logprob: bool) -> dict[str, Any]:
        temperature = sp.get("temperature", 1.0)
        top_k = sp.get("top_k", -1)
        top_p = sp.get("top_p", 1.0)
        if not (top_k == -1 or top_k >= 1):
            raise ValueError(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        greedy = temperature < 1e-6
        stop_ids = set(sp.get("stop_token_ids") or []) | {EOS}
        seed = sp.get("sampling_seed", 42)
        gen = torch.Generator().manual_seed(int(seed))
        rid = f"req-{k}"
        if self.abort_next is not None:
            message, self.abort_next = self.abort_next, None
            meta = {"id": rid, "finish_reason": {"type": "abort", "message": message, "status_code": 400,
                                                   "err_type": None}, "prompt_tokens": len(ids)}  # fmt: skip
            return {"text": "", "output_ids": [], "meta_info": meta}
        output_ids: list[int] = []
        logprobs: list[tuple[float, int, None]] = []
        finish: dict[str, Any] = {"type": "length", "length": sp["max_new_tokens"]}
        last = ids[-1]
        for _ in range(sp["max_new_tokens"]):
            logits = self.logits(last)
            if greedy:
                token = int(torch.argmax(logits))
                logprob = float(torch.log_softmax(logits, -1)[token])
            else:
                probs = torch.softmax(logits / temperature, -1)
                filtered = probs.clone()
                if top_k != -1:
                    filtered[torch.argsort(probs, descending=True)[top_k:]] = 0.0
                token = int(torch.multinomial(filtered, 1, generator=gen))
                logprob = float(torch.log(probs[token]))  # full distribution, before top-k
            output_ids.append(token)
            logprobs.append((logprob, token, None))
            last = token
            # sglang checks the length limit first: a stop token sampled last is reported as "length"
            if len(output_ids) >= sp["max_new_tokens"]:
                break
            if token in stop_ids:
                finish = {"type": "stop", "matched": token}
                break
        meta = {"id": rid, "finish_reason": finish, "prompt_tokens": len(ids), "completion_tokens": len(output_ids)}
        if return_logprob:
            meta["output_token_logprobs"] = logprobs
            meta["input_token_logprobs"] = [(None, ids[-1], None)]
        return {"text": "<detokenized>", "output_ids": output_ids, "meta_info": meta}

    # -- weights ----------------------------------------------------------------------------------

    def _load(self, named: list[tuple[str, torch.Tensor]]) -> tuple[bool, str]:
        for name, tensor in named:
            if name not in self.weights:
                return False, f"Failed to update parameter online: unknown parameter {name}"
            self.weights[name] = tensor.to(self.weights[name].dtype).clone()
        return True, "Success"

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        self.calls.append(("update_weights_from_tensor", {"load_format": load_format, "flush_cache": flush_cache,
                                                          "payload": named_tensors}))  # fmt: skip
        if "weights" in self.offload_tags:
            raise RuntimeError("fake engine: weights are released")
        if self.fail_update:
            return False, self.fail_update
        if load_format == "flattened_bucket":
            assert len(named_tensors) == self.tp_size, "one payload per TP rank"
            result = self._load(reconstruct(named_tensors[0]))
        else:
            assert load_format is None
            result = self._load(list(named_tensors))
        if flush_cache:
            self.flushes += 1
        return result

    def init_weights_update_group(self, master_address, master_port, rank_offset, world_size, group_name,
                                  backend="nccl"):  # fmt: skip
        self.group = dict(master_address=master_address, master_port=master_port, rank_offset=rank_offset,
                          world_size=world_size, group_name=group_name, backend=backend)  # fmt: skip
        self.calls.append(("init_weights_update_group", self.group))
        return True, "Succeeded to initialize custom process group."

    def update_weights_from_distributed(self, names, dtypes, shapes, group_name="weight_update_group",
                                        flush_cache=True, load_format=None):  # fmt: skip
        assert self.group is not None and group_name == self.group["group_name"], "init the group first"
        self.calls.append(("update_weights_from_distributed", dict(names=names, dtypes=dtypes, shapes=shapes,
                                                                   load_format=load_format)))  # fmt: skip
        empties = [(n, torch.empty(s, dtype=getattr(torch, d))) for n, d, s in zip(names, dtypes, shapes, strict=True)]
        if load_format == "flattened_bucket":
            received = self.inbox.get(timeout=10)
            size = sum(t.numel() * t.element_size() for _, t in empties)
            assert received.dtype == torch.uint8 and received.numel() == size
            named, start = [], 0
            for name, t in empties:
                nbytes = t.numel() * t.element_size()
                named.append((name, received[start : start + nbytes].view(t.dtype).reshape(t.shape)))
                start += nbytes
        else:
            named = [(name, self.inbox.get(timeout=10).view(t.dtype).reshape(t.shape)) for name, t in empties]
        return self._load(named)

    def flush_cache(self):
        self.flushes += 1

    # -- memory -----------------------------------------------------------------------------------

    def release_memory_occupation(self, tags=None):
        tags = tags or ["kv_cache", "weights", "cuda_graph"]
        self.calls.append(("release", list(tags)))
        self.offload_tags.update(tags)
        if "weights" in tags and not self.weights_cpu_backup:
            # torch_memory_saver frees the region; resumed memory holds whatever the allocator hands back
            self.weights = {name: torch.full_like(w, float("nan")) for name, w in self.weights.items()}

    def resume_memory_occupation(self, tags=None):
        tags = tags or ["kv_cache", "weights", "cuda_graph"]
        self.calls.append(("resume", list(tags)))
        for tag in tags:
            self.offload_tags.remove(tag)  # KeyError, like sglang, for a tag that was not released

    def shutdown(self):
        self.shutdowns += 1


class FakeBroadcaster:
    """Rank 0 of the weight group: hands each broadcast tensor to the fake engine's inbox."""

    def __init__(self, engine: FakeSGLangEngine) -> None:
        self.engine = engine
        self.inits: list[tuple[str, int, int, str]] = []
        self.sent: list[torch.Tensor] = []
        self.closed = False

    def init_group(self, master_address: str, master_port: int, world_size: int, group_name: str) -> None:
        self.inits.append((master_address, master_port, world_size, group_name))

    def broadcast(self, tensor: torch.Tensor) -> None:
        self.sent.append(tensor)
        self.engine.inbox.put(tensor.clone())

    def close(self) -> None:
        self.closed = True
