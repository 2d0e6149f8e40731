"""The `sglang` generator: rlx's Generator contract on SGLang's offline engine (`sglang.Engine`).

The engine is injected (`SGLangGenerator(..., engine=...)`); `_make_engine` builds the real one only when none
is given, so request building, result conversion and weight bucketing are testable without sglang.
Targets sglang 0.5.14 (0.5.23 read too; the calls used are the same): see README.md for each call.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

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
from rlx_sglang.plugin import INSTALL_HINT, SGLangConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHT_GROUP = "rlx_weight_update"
# sglang's memory tags (sglang/srt/constants.py). Weights come back before the KV cache (the contract's order).
WEIGHT_TAGS = ("weights", "cuda_graph")
KV_CACHE_TAGS = ("kv_cache",)

Bucket = list[tuple[str, "torch.Tensor"]]
BucketEncoder = Callable[[Bucket, int], list[Any]]


# ------------------------------------------------------------------------------------------ engine


def engine_kwargs(config: SGLangConfig, model: ModelSpec, seed: int) -> dict[str, Any]:
    """sglang `ServerArgs` keyword arguments for this generator's config and model."""
    if model.path.startswith("builtin:"):
        raise ComponentError(
            f"generator 'sglang' needs a Hugging Face model folder or hub id, got '{model.path}' "
            "(rlx's embedded CPU model); use --generator hf for it"
        )
    kwargs: dict[str, Any] = {
        "model_path": model.path,
        "tokenizer_path": model.tokenizer_path,
        "trust_remote_code": model.trust_remote_code,
        "tp_size": config.tp_size,
        "context_length": config.context_length or model.max_seq_len,
        "dtype": model.dtype if config.dtype == "auto" else config.dtype,
        "random_seed": seed if config.seed is None else config.seed,
        "base_gpu_id": config.base_gpu_id,
        "enable_memory_saver": config.enable_memory_saver,
        "enable_weights_cpu_backup": config.enable_memory_saver and config.sleep_weights == "backup",
        "enable_deterministic_inference": config.deterministic_inference,
        "skip_tokenizer_init": config.skip_tokenizer_init,
        "grammar_backend": config.grammar_backend,
    }
    for key in ("mem_fraction_static", "attention_backend", "sampling_backend"):
        value = getattr(config, key)
        if value is not None:  # None: leave sglang's own (hardware-dependent) default
            kwargs[key] = value
    kwargs.update(config.engine_args)
    return kwargs


def check_logprob_env(environ: Mapping[str, str]) -> None:
    """Refuse SGLANG_RETURN_ORIGINAL_LOGPROB: it makes sglang report logprobs before temperature scaling."""
    value = environ.get("SGLANG_RETURN_ORIGINAL_LOGPROB", "")
    if value.strip().lower() in ("1", "true"):
        raise ComponentError(
            "SGLANG_RETURN_ORIGINAL_LOGPROB is set: sglang would then return log-probabilities of the raw logits, "
            "but rlx needs them under softmax(logits / temperature) (the trainer's quantity). Unset it."
        )


def _make_engine(config: SGLangConfig, model: ModelSpec, seed: int) -> Any:
    """Start a real `sglang.Engine` (scheduler and detokenizer subprocesses on the GPU)."""
    check_logprob_env(os.environ)
    try:
        import sglang
    except ImportError as exc:
        raise ComponentError(f"generator 'sglang' needs the sglang engine. Install it with: {INSTALL_HINT}") from exc
    return sglang.Engine(**engine_kwargs(config, model, seed))


# ------------------------------------------------------------------------------------------ requests


def build_requests(
    prompts: Sequence[Sequence[int]], params: SamplingParams, seed_base: int
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Expand prompts x n into one request each (prompt-major), with sglang sampling-param dicts.

    The n samples are sent as separate requests rather than sglang's `n` (which sglang itself says is
    slow for big batches and which would share one `sampling_seed`); the radix cache shares the prefix.
    Each (prompt, sample) gets its own seed: with equal seeds sglang's deterministic sampler would return n
    identical samples.
    """
    check_request(prompts, params)
    seeds = sample_seeds(seed_base, len(prompts) * params.n)
    input_ids: list[list[int]] = []
    sampling: list[dict[str, Any]] = []
    for i, prompt in enumerate(prompts):
        ids = [int(t) for t in prompt]
        for j in range(params.n):
            input_ids.append(ids)
            request: dict[str, Any] = {
                "max_new_tokens": params.max_new_tokens,
                "temperature": params.temperature,  # 0 -> sglang samples greedily (top_k = 1)
                "top_p": params.top_p,
                "top_k": params.top_k if params.top_k > 0 else -1,
                "sampling_seed": seeds[i * params.n + j],
            }
            if params.stop_token_ids:
                request["stop_token_ids"] = [int(t) for t in params.stop_token_ids]
            sampling.append(request)
    return input_ids, sampling


def to_completion(output: Mapping[str, Any], stop_ids: Collection[int] = frozenset()) -> Completion:
    """One sglang result dict ({"output_ids", "meta_info": {"output_token_logprobs", "finish_reason"}})
    -> Completion. Raises on an aborted request or logprobs that do not line up with the tokens.

    `stop_ids`: the request's stop tokens (EOS + stop_token_ids). sglang tests the length limit before the stop
    tokens (schedule_batch.py `update_finish_state`), so a stop token sampled as the last allowed token is
    reported as "length"; rlx reports it as "stop", as the other generators do.
    """
    meta = output["meta_info"]
    reason = finish_reason(meta)  # first: an aborted request carries no logprobs, only the reason
    token_ids = tuple(int(t) for t in output["output_ids"])
    if reason == "length" and token_ids and token_ids[-1] in stop_ids:
        reason = "stop"
    entries = meta.get("output_token_logprobs")
    if entries is None:
        raise RuntimeError(f"sglang returned no output_token_logprobs for request {meta.get('id')}")
    if len(entries) != len(token_ids):
        raise RuntimeError(
            f"sglang request {meta.get('id')}: {len(entries)} logprobs for {len(token_ids)} output tokens"
        )
    logprobs = []
    for position, (entry, token) in enumerate(zip(entries, token_ids, strict=True)):
        logprob, entry_token = entry[0], int(entry[1])  # (logprob, token_id, text-or-None)
        if entry_token != token:
            raise RuntimeError(
                f"sglang request {meta.get('id')}: logprob at position {position} is for token {entry_token}, "
                f"the output has {token}"
            )
        logprobs.append(float(logprob))
    return Completion(token_ids=token_ids, logprobs=tuple(logprobs), finish_reason=reason)


def finish_reason(meta: Mapping[str, Any]) -> FinishReason:
    """sglang's finish_reason dict ({"type": "stop"|"length"|"abort", ...}) -> "stop" | "length"."""
    reason = meta.get("finish_reason")
    kind = reason.get("type") if isinstance(reason, Mapping) else reason
    if kind in ("stop", "length"):
        return kind
    if kind == "abort":
        message = reason.get("message") if isinstance(reason, Mapping) else None
        raise RuntimeError(f"sglang aborted request {meta.get('id')}: {message or reason}")
    raise RuntimeError(f"sglang request {meta.get('id')} finished with an unknown reason {reason!r}")


def group_completions(
    outputs: Sequence[Mapping[str, Any]], num_prompts: int, n: int, stop_ids: Collection[int] = frozenset()
) -> list[list[Completion]]:
    """Prompt-major flat results -> one list of n completions per prompt."""
    if len(outputs) != num_prompts * n:
        raise RuntimeError(f"sglang returned {len(outputs)} results for {num_prompts} prompts x n={n}")
    return [[to_completion(outputs[i * n + j], stop_ids) for j in range(n)] for i in range(num_prompts)]


# ------------------------------------------------------------------------------------------ weights


def sglang_flattened_payload(bucket: Bucket, tp_size: int) -> list[Any]:
    """One serialized FlattenedTensorBucket per TP rank, the form `load_format="flattened_bucket"` expects.

    Must use sglang's own classes: its SafeUnpickler only accepts sglang.srt.weight_sync types.
    """
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

    flat = FlattenedTensorBucket(named_tensors=bucket)
    data = {"flattened_tensor": flat.get_flattened_tensor(), "metadata": flat.get_metadata()}
    # one payload per rank (not one shared string) so each rank's CUDA-IPC references are released on load
    return [MultiprocessingSerializer.serialize(data, output_str=True) for _ in range(tp_size)]


def stage_on_cuda(bucket: Bucket) -> Bucket:
    """Move CPU tensors to this process's current GPU, if it has one: the engine's workers then open them as
    CUDA IPC handles (sglang's colocated path) rather than through shared-memory file descriptors."""
    import torch

    if not torch.cuda.is_available():
        return bucket
    device = torch.device("cuda", torch.cuda.current_device())
    return [(name, tensor.to(device) if tensor.device.type == "cpu" else tensor) for name, tensor in bucket]


def split_by_dtype(bucket: Bucket) -> list[Bucket]:
    """One sub-bucket per dtype, order kept within each: sglang views each tensor out of the flat uint8 buffer
    at its byte offset, which fails when a tensor of a wider dtype starts at an unaligned offset (e.g. float32
    after 5 bfloat16 values); a single-dtype bucket is always aligned."""
    groups: dict[Any, Bucket] = {}
    for name, tensor in bucket:
        groups.setdefault(tensor.dtype, []).append((name, tensor))
    return list(groups.values())


def flatten_for_broadcast(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(sum of bytes,) uint8: the same layout sglang's FlattenedTensorBucket builds on the receiving side."""
    import torch

    return torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors])


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": sglang resolves it with getattr(torch, name)."""
    return str(dtype).removeprefix("torch.")


def _check_result(result: Any, call: str) -> None:
    """sglang weight calls return (success, message); turn a failure into an error naming the call."""
    if isinstance(result, tuple) and len(result) >= 2 and not result[0]:
        raise RuntimeError(f"sglang {call} failed: {result[1]}")


class WeightBroadcaster(Protocol):
    """Sends tensors as rank 0 of a NCCL group that the engine's TP ranks join (ranks 1..tp_size)."""

    def init_group(self, master_address: str, master_port: int, world_size: int, group_name: str) -> None: ...

    def broadcast(self, tensor: torch.Tensor) -> None: ...

    def close(self) -> None: ...


class TorchNcclBroadcaster:
    """The real sender: sglang's `init_custom_process_group` (the engine side uses the same) + broadcast."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._group: Any = None

    def init_group(self, master_address: str, master_port: int, world_size: int, group_name: str) -> None:
        import torch
        from sglang.srt.utils import init_custom_process_group

        torch.cuda.set_device(torch.device(self.device))
        self._group = init_custom_process_group(
            backend="nccl",
            init_method=f"tcp://{master_address}:{master_port}",
            world_size=world_size,
            rank=0,
            group_name=group_name,
        )

    def broadcast(self, tensor: torch.Tensor) -> None:
        import torch
        import torch.distributed as dist

        # the current CUDA device is per thread, and each bucket is sent from a fresh thread
        with torch.cuda.device(tensor.device):
            dist.broadcast(tensor, src=0, group=self._group)

    def close(self) -> None:
        if self._group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(self._group)
            self._group = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _run_beside(send: Callable[[], None], receive: Callable[[], Any]) -> Any:
    """Run `send` in a thread while `receive` (a blocking engine call) runs here; both must meet in NCCL.

    The engine call stays on this thread because sglang drives its own asyncio loop from it.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            send()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="rlx-sglang-weight-sender", daemon=True)
    thread.start()
    try:
        result = receive()
    finally:
        thread.join()
    if errors:
        raise RuntimeError(f"sending weights over NCCL failed: {errors[0]}") from errors[0]
    return result


# ------------------------------------------------------------------------------------------ generator


class SGLangGenerator:
    """rlx Generator on an `sglang.Engine` (or any object with the same methods, for tests)."""

    def __init__(
        self,
        config: SGLangConfig,
        *,
        model: ModelSpec,
        seed: int,
        engine: Any = None,
        encode_bucket: BucketEncoder | None = None,
        broadcaster: WeightBroadcaster | None = None,
        eos_token_ids: Collection[int] | None = None,
    ) -> None:
        self.config = config
        self.model = model
        # sglang stops at the tokenizer's EOS only when it loads the tokenizer
        if eos_token_ids is None:
            eos_token_ids = special_tokens(model, tokenizer=not config.skip_tokenizer_init).eos_ids
        self._eos_ids = frozenset(int(t) for t in eos_token_ids)
        self._engine = engine if engine is not None else _make_engine(config, model, seed)
        self._encode_bucket = encode_bucket or sglang_flattened_payload
        self._broadcaster = broadcaster
        self._nccl_ready = False
        self._seeds = SeedStream(seed if config.seed is None else config.seed)
        self._memory = ReleasedMemory(weight_tags=WEIGHT_TAGS, kv_cache_tags=KV_CACHE_TAGS)
        self._guard = WeightPushGuard("generator 'sglang'")
        self._weights_dropped = False  # sleep() released the weights without a CPU copy
        self._closed = False

    # -- generation ---------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, in order, `params.n` completions with per-token logprobs.

        Logprobs are sglang's `log(softmax(logits / temperature))` of the sampled token, taken before
        top-k/top-p (sglang/srt/layers/sampler.py); at temperature 0 (greedy) they are log_softmax(logits).
        """
        self._check_open()
        self._guard.check()
        if not prompts:
            return []
        if self._memory.released:
            raise RuntimeError("generate() called while the sglang generator sleeps; call wake_up() first")
        input_ids, sampling = build_requests(prompts, params, self._seeds.resolve(params))
        outputs = self._engine.generate(input_ids=input_ids, sampling_params=sampling, return_logprob=True)
        if isinstance(outputs, Mapping):  # sglang unwraps a batch of one request
            outputs = [outputs]
        stop_ids = self._eos_ids | {int(t) for t in params.stop_token_ids}
        return stamp_version(group_completions(outputs, len(prompts), params.n, stop_ids), self._guard.version)

    # -- weights ------------------------------------------------------------------------------

    def update_weights(self, weights: NamedTensors, version: int | None = None) -> None:
        """Stream new weights into the engine in buckets of at most `weight_bucket_mb` MiB.

        If the generator sleeps, only its weight memory is brought back first (the KV cache stays released
        until wake_up()), which is the order that needs the least memory when colocated.
        """
        self._check_open()
        self._memory.resume_weights(self._resume)
        with self._guard.push(version):
            self._push(weights)

    def _push(self, weights: NamedTensors) -> None:
        max_bytes = self.config.weight_bucket_mb * 2**20
        sent = 0
        for bucket in iter_buckets(weights, max_bytes):
            if self.config.weight_sync == "nccl":
                self._send_nccl(bucket)
            else:
                self._send_tensors(bucket)
            sent += len(bucket)
        if sent == 0:
            raise ValueError("update_weights() got no tensors: the weight stream was empty")
        self._weights_dropped = False  # the contract: update_weights pushes every weight
        # one cache flush at the end instead of one per bucket: cached prefixes were computed with old weights
        self._engine.flush_cache()

    def _send_tensors(self, bucket: Bucket) -> None:
        bucket = stage_on_cuda(bucket)
        if self.config.weight_format == "flattened_bucket":
            for part in split_by_dtype(bucket):
                payload = self._encode_bucket(part, self.config.tp_size)
                result = self._engine.update_weights_from_tensor(
                    named_tensors=payload, load_format="flattened_bucket", flush_cache=False
                )
                _check_result(result, "update_weights_from_tensor")
        else:
            result = self._engine.update_weights_from_tensor(named_tensors=bucket, flush_cache=False)
            _check_result(result, "update_weights_from_tensor")

    def _send_nccl(self, bucket: Bucket) -> None:
        flattened = self.config.weight_format == "flattened_bucket"
        for part in split_by_dtype(bucket) if flattened else [bucket]:
            self._broadcast_part(part, flattened)

    def _broadcast_part(self, bucket: Bucket, flattened: bool) -> None:
        broadcaster = self._ensure_nccl_group()
        device = self.config.nccl_device
        tensors = [tensor.to(device).contiguous() for _, tensor in bucket]  # NCCL sends contiguous GPU memory
        to_send = [flatten_for_broadcast(tensors)] if flattened else tensors

        def send() -> None:
            for tensor in to_send:
                broadcaster.broadcast(tensor)

        result = _run_beside(
            send,
            lambda: self._engine.update_weights_from_distributed(
                names=[name for name, _ in bucket],
                dtypes=[dtype_name(t.dtype) for t in tensors],
                shapes=[list(t.shape) for t in tensors],
                group_name=WEIGHT_GROUP,
                flush_cache=False,
                load_format="flattened_bucket" if flattened else None,
            ),
        )
        _check_result(result, "update_weights_from_distributed")

    def _ensure_nccl_group(self) -> WeightBroadcaster:
        if self._broadcaster is None:
            self._broadcaster = TorchNcclBroadcaster(self.config.nccl_device)
        broadcaster = self._broadcaster
        if self._nccl_ready:
            return broadcaster
        address = self.config.nccl_master_address
        port = self.config.nccl_master_port or _free_port()
        world_size = 1 + self.config.tp_size  # rank 0: this process; ranks 1..tp: the engine's TP workers
        result = _run_beside(
            lambda: broadcaster.init_group(address, port, world_size, WEIGHT_GROUP),
            lambda: self._engine.init_weights_update_group(
                master_address=address,
                master_port=port,
                rank_offset=1,
                world_size=world_size,
                group_name=WEIGHT_GROUP,
                backend="nccl",
            ),
        )
        _check_result(result, "init_weights_update_group")
        self._nccl_ready = True
        return broadcaster

    # -- memory ---------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Release the KV cache and CUDA graphs, and the weights unless `sleep_weights` is keep (needs
        enable_memory_saver; else a logged no-op)."""
        self._check_open()
        if not self.config.enable_memory_saver:
            log.warning("sglang generator: sleep() is a no-op because enable_memory_saver is off")
            return
        keep = ("weights",) if self.config.sleep_weights == "keep" else ()
        released = self._memory.release(lambda tags: self._engine.release_memory_occupation(tags=tags), keep=keep)
        if "weights" in released and self.config.sleep_weights == "drop":
            self._weights_dropped = True

    def wake_up(self) -> None:
        """Resume what sleep() released: weights (and CUDA graphs) first, then the KV cache."""
        self._check_open()
        if self._weights_dropped:
            raise RuntimeError(
                "sglang generator: sleep() dropped the weights without a copy (generator.sleep_weights=drop), so "
                "waking would sample from garbage; push the weights with update_weights() before wake_up(), or set "
                "generator.sleep_weights to keep or backup"
            )
        self._memory.resume_all(self._resume)  # sglang fails on resuming a tag it did not release

    def _resume(self, tags: list[str]) -> None:
        self._engine.resume_memory_occupation(tags=tags)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._nccl_ready and self._broadcaster is not None:
                self._broadcaster.close()
        finally:
            self._engine.shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the sglang generator is closed")
