"""The `trtllm` generator: rlx's Generator contract on TensorRT-LLM's LLM API (PyTorch backend, Ray orchestrator).

The engine (`tensorrt_llm.LLM`) is injected; `_make_engine` builds the real one only when none is given, so
request building, result conversion, logprob-mode choice and weight bucketing are testable without TensorRT-LLM.
Targets tensorrt-llm 1.2.x; the calls used are listed in README.md with the files they were read from.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rlx.errors import ComponentError
from rlx.generation import (
    ReleasedMemory,
    SeedStream,
    WeightPushGuard,
    check_request,
    sample_seeds,
    special_tokens,
    stamp_version,
)
from rlx.interfaces import Completion, FinishReason, ModelSpec, NamedTensors, SamplingParams
from rlx.weights import iter_buckets
from rlx_trtllm.plugin import INSTALL_HINT, TRTLLMConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Memory tags of TensorRT-LLM's executor (tensorrt_llm/_torch/virtual_memory.py ExecutorMemoryType), as verl's
# TRT-LLM rollout releases them; everything but the KV cache is "weights" for the contract's wake-up order.
WEIGHT_TAGS = (
    "sampler", "drafter", "guided_decoder", "spec_resource_manager", "model_extra", "executor_extra", "model",
    "draft_model",
)  # fmt: skip
KV_CACHE_TAGS = ("kv_cache",)
WORKER_EXTENSION = "rlx_trtllm.worker_extension.RlxWorkerExtension"

Bucket = list[tuple[str, "torch.Tensor"]]
HandleEncoder = Callable[[Bucket, Sequence[str]], tuple[dict[str, str], list[Any]]]


# ------------------------------------------------------------------------------------------ engine


def llm_kwargs(config: TRTLLMConfig, model: ModelSpec) -> dict[str, Any]:
    """`tensorrt_llm.LLM` keyword arguments (kv_cache_config as a dict; `_make_engine` wraps it)."""
    if model.path.startswith("builtin:"):
        raise ComponentError(
            f"generator 'trtllm' needs a Hugging Face model folder or hub id, got '{model.path}' "
            "(rlx's embedded CPU model); use --generator hf for it"
        )
    kwargs: dict[str, Any] = {
        "model": model.path,
        "tokenizer": model.tokenizer_path,
        "trust_remote_code": model.trust_remote_code,
        "tensor_parallel_size": config.tensor_parallel_size,
        "dtype": model.dtype if config.dtype == "auto" else config.dtype,
        "backend": "pytorch",
        # weight updates and sleep/wakeup go through collective RPC, which only the Ray executor has
        "orchestrator_type": "ray",
        "ray_worker_extension_cls": WORKER_EXTENSION,
        "enable_sleep": config.enable_sleep,
        "max_seq_len": config.max_seq_len or model.max_seq_len,
        # TorchSampler is the sampler with SamplingParams.logprobs_mode (raw / processed)
        "sampler_type": "TorchSampler",
        "kv_cache_config": {
            "free_gpu_memory_fraction": config.free_gpu_memory_fraction,
            "enable_block_reuse": config.enable_block_reuse,
        },
    }
    if config.max_batch_size is not None:
        kwargs["max_batch_size"] = config.max_batch_size
    if config.max_num_tokens is not None:
        kwargs["max_num_tokens"] = config.max_num_tokens
    if not config.cuda_graph:
        kwargs["cuda_graph_config"] = None
    if config.tensor_parallel_size > 1:
        # TensorRT-LLM's own AsyncLLM forces this for RL: its custom all-reduce hurt convergence with TP > 1
        kwargs["allreduce_strategy"] = "NCCL"
    kwargs.update(config.llm_args)
    return kwargs


def _make_engine(config: TRTLLMConfig, model: ModelSpec) -> Any:
    """Start a real `tensorrt_llm.LLM` (Ray workers on the GPUs)."""
    try:
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import KvCacheConfig
    except ImportError as exc:
        raise ComponentError(
            f"generator 'trtllm' needs TensorRT-LLM (>= 1.2). Install it with: {INSTALL_HINT}"
        ) from exc
    kwargs = llm_kwargs(config, model)
    kwargs["kv_cache_config"] = KvCacheConfig(**kwargs["kv_cache_config"])
    return LLM(**kwargs)


# ------------------------------------------------------------------------------------------ requests


def logprobs_mode_for(params: SamplingParams, *, supports_mode: bool, approximate: bool) -> str | None:
    """Which TensorRT-LLM logprobs_mode yields log softmax(logits / T) before top-k/top-p, or raise.

    TensorRT-LLM's TorchSampler returns "raw" = log_softmax(logits) (T = 1) by default, or "processed" = after
    temperature AND top-k/top-p (filtered tokens renormalised). So: T in {0, 1} -> raw (exact; greedy is
    reported at T = 1); T != 1 without top-k/top-p -> processed (exact); T != 1 with them -> no exact mode.
    """
    if params.temperature in (0.0, 1.0):
        return "raw" if supports_mode else None
    if not supports_mode:
        raise ValueError(
            f"temperature {params.temperature} needs SamplingParams.logprobs_mode, which this tensorrt_llm lacks "
            "(its logprobs are of the raw logits): use tensorrt-llm >= 1.2 or temperature 1.0"
        )
    filtering = params.top_k > 0 or params.top_p < 1.0
    if filtering and not approximate:
        raise ValueError(
            f"TensorRT-LLM cannot return logprobs under temperature {params.temperature} before top-k/top-p "
            f"filtering (top_k={params.top_k}, top_p={params.top_p}): use temperature 1.0, or no top-k/top-p, "
            "or set generator.approximate_logprobs=true to accept logprobs renormalised over the kept tokens"
        )
    return "processed"


def build_requests(
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    seed_base: int,
    eos_token_ids: Sequence[int],
    logprobs_mode: str | None,
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """prompts x n -> one request each (prompt-major) with tensorrt_llm.SamplingParams keyword arguments.

    EOS is handled as a stop token (end_id=-1, stop_token_ids + include_stop_str_in_output) so that the stop
    token stays in token_ids with its logprob, as the rlx contract wants; verl's TRT-LLM rollout does the same.
    Each (prompt, sample) gets its own seed (an unset seed is 0 for every TRT-LLM request).
    """
    check_request(prompts, params)
    if not eos_token_ids:
        raise ValueError("eos_token_ids is empty: completions would never stop at EOS")
    stop_ids = list(dict.fromkeys([*(int(t) for t in eos_token_ids), *(int(t) for t in params.stop_token_ids)]))
    seeds = sample_seeds(seed_base, len(prompts) * params.n)
    inputs: list[list[int]] = []
    sampling: list[dict[str, Any]] = []
    for i, prompt in enumerate(prompts):
        ids = [int(t) for t in prompt]
        for j in range(params.n):
            inputs.append(ids)
            request: dict[str, Any] = {
                "max_tokens": params.max_new_tokens,
                # always explicit: with temperature, top_p and top_k all None the TorchSampler is greedy
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k if params.top_k > 0 else 0,  # TRT-LLM: 0 = whole vocabulary
                "seed": seeds[i * params.n + j],
                "end_id": -1,
                "pad_id": stop_ids[0],
                "stop_token_ids": stop_ids,
                "include_stop_str_in_output": True,
                "detokenize": False,
                "logprobs": 1,  # the sampled token's logprob is always among the returned ones
            }
            if logprobs_mode is not None:
                request["logprobs_mode"] = logprobs_mode
            sampling.append(request)
    return inputs, sampling


def _logprob_value(entry: Any, token: int, position: int) -> float:
    """A per-token logprob entry: {token_id: Logprob(logprob, rank)} (default) or a float (simple format)."""
    if isinstance(entry, Mapping):
        if token not in entry:
            raise RuntimeError(f"TensorRT-LLM logprobs at position {position} lack the sampled token {token}")
        value = entry[token]
        return float(getattr(value, "logprob", value))
    return float(entry)


def finish_reason(reason: Any) -> FinishReason:
    if reason in ("stop", "length"):
        return reason
    raise RuntimeError(f"TensorRT-LLM request finished with reason {reason!r} (expected 'stop' or 'length')")


def to_completion(sequence: Any) -> Completion:
    """One tensorrt_llm CompletionOutput (token_ids, logprobs, finish_reason) -> Completion."""
    reason = finish_reason(sequence.finish_reason)
    token_ids = tuple(int(t) for t in sequence.token_ids)
    entries = sequence.logprobs or []
    if len(entries) != len(token_ids):
        raise RuntimeError(f"TensorRT-LLM returned {len(entries)} logprobs for {len(token_ids)} tokens")
    logprobs = tuple(_logprob_value(e, t, i) for i, (e, t) in enumerate(zip(entries, token_ids, strict=True)))
    return Completion(token_ids=token_ids, logprobs=logprobs, finish_reason=reason)


# ------------------------------------------------------------------------------------------ weights


def _local_cuda_index(uuid: str) -> int:
    """This process's CUDA device index with that UUID (NVML's "GPU-..." form or torch's bare form)."""
    import torch

    wanted = uuid.lower().removeprefix("gpu-")
    for index in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(index).uuid).lower().removeprefix("gpu-") == wanted:
            return index
    raise RuntimeError(
        f"TensorRT-LLM worker GPU {uuid} is not visible to this process: CUDA IPC weight updates need the "
        "generator on the same node with the workers' GPUs visible (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1)"
    )


def ipc_handle_payload(bucket: Bucket, worker_uuids: Sequence[str]) -> tuple[dict[str, str], list[Any]]:
    """({worker GPU uuid: base64(pickle([(name, reduce_tensor(t)), ...]))}, tensors to keep alive).

    The dict is what the worker's `update_weights` reads (tensorrt_llm/llmapi/rlhf_utils.py). A full copy
    goes to each worker's GPU (TensorRT-LLM's loader shards it for tensor parallelism); the IPC handles point
    into the returned tensors, which the caller keeps until the workers have loaded the bucket.
    """
    import torch
    from torch.multiprocessing.reductions import reduce_tensor

    payload: dict[str, str] = {}
    keep_alive: list[torch.Tensor] = []
    for uuid in dict.fromkeys(worker_uuids):
        device = torch.device("cuda", _local_cuda_index(uuid))
        handles = []
        for name, tensor in bucket:
            local = tensor.detach().to(device).contiguous()
            keep_alive.append(local)
            handles.append((name, reduce_tensor(local)))
        payload[uuid] = base64.b64encode(pickle.dumps(handles)).decode("ascii")
    return payload, keep_alive


# ------------------------------------------------------------------------------------------ generator


def _has_field(cls: type, name: str) -> bool:
    """Whether tensorrt_llm's SamplingParams (a dataclass; pydantic-proofed) has the field `name`."""
    if dataclasses.is_dataclass(cls):
        return name in {f.name for f in dataclasses.fields(cls)}
    return name in getattr(cls, "model_fields", {})


class TRTLLMGenerator:
    """rlx Generator on a `tensorrt_llm.LLM` (or any object with the same methods, for tests)."""

    def __init__(
        self,
        config: TRTLLMConfig,
        *,
        model: ModelSpec,
        seed: int,
        engine: Any = None,
        sampling_params_cls: type | None = None,
        eos_token_ids: Sequence[int] | None = None,
        encode_bucket: HandleEncoder | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self._eos = tuple(eos_token_ids) if eos_token_ids is not None else special_tokens(model).eos_ids
        self._engine = engine if engine is not None else _make_engine(config, model)
        if sampling_params_cls is None:
            from tensorrt_llm import SamplingParams as sampling_params_cls
        self._sampling_cls = sampling_params_cls
        self._supports_mode = _has_field(sampling_params_cls, "logprobs_mode")
        self._encode_bucket = encode_bucket or ipc_handle_payload
        self._worker_uuids: list[str] | None = None
        self._seeds = SeedStream(seed if config.seed is None else config.seed)
        self._memory = ReleasedMemory(weight_tags=WEIGHT_TAGS, kv_cache_tags=KV_CACHE_TAGS)
        self._guard = WeightPushGuard("generator 'trtllm'")
        self._closed = False

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, in order, `params.n` completions; logprobs as chosen by `logprobs_mode_for`."""
        self._check_open()
        self._guard.check()
        if not prompts:
            return []
        if self._memory.released:
            raise RuntimeError("generate() called while the trtllm generator sleeps; call wake_up() first")
        mode = logprobs_mode_for(
            params, supports_mode=self._supports_mode, approximate=self.config.approximate_logprobs
        )
        inputs, requests = build_requests(
            prompts, params, seed_base=self._seeds.resolve(params), eos_token_ids=self._eos, logprobs_mode=mode
        )
        sampling = [self._sampling_cls(**request) for request in requests]
        outputs = self._engine.generate(inputs, sampling_params=sampling, use_tqdm=False)
        if len(outputs) != len(inputs):
            raise RuntimeError(f"TensorRT-LLM returned {len(outputs)} results for {len(inputs)} requests")
        n = params.n
        results = [[to_completion(outputs[i * n + j].outputs[0]) for j in range(n)] for i in range(len(prompts))]
        return stamp_version(results, self._guard.version)

    def update_weights(self, weights: NamedTensors, version: int | None = None) -> None:
        """Send buckets of CUDA IPC handles to every worker, then finalize (`update_weights(None)`), which
        post-processes the loaded weights and resets the prefix cache. Wakes only the weights if asleep."""
        self._check_open()
        self._memory.resume_weights(self._resume)
        with self._guard.push(version):
            self._push(weights)

    def _push(self, weights: NamedTensors) -> None:
        if self._worker_uuids is None:
            self._worker_uuids = [str(u) for u in self._engine._collective_rpc("rlx_device_uuid")]
        sent = 0
        for bucket in iter_buckets(weights, self.config.weight_bucket_mb * 2**20):
            payload, keep_alive = self._encode_bucket(bucket, self._worker_uuids)
            self._engine._collective_rpc("update_weights", args=(payload,))
            del payload, keep_alive  # the workers have loaded the bucket: its IPC-shared copies may go
            sent += len(bucket)
        if sent == 0:
            raise ValueError("update_weights() got no tensors: the weight stream was empty")
        self._engine._collective_rpc("update_weights", args=(None,))

    def sleep(self) -> None:
        """Release the KV cache and the model's memory (needs enable_sleep; else a logged no-op)."""
        self._check_open()
        if not self.config.enable_sleep:
            log.warning("trtllm generator: sleep() is a no-op because enable_sleep is off")
            return
        self._memory.release(lambda tags: self._engine._collective_rpc("sleep", args=(tags,)))

    def wake_up(self) -> None:
        """Rematerialise what sleep() released: weights first, then the KV cache."""
        self._check_open()
        self._memory.resume_all(self._resume)

    def _resume(self, tags: list[str]) -> None:
        self._engine._collective_rpc("wakeup", args=(tags,))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._engine.shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the trtllm generator is closed")
