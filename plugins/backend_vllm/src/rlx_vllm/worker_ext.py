"""Methods rlx adds to every vLLM worker (`LLM(worker_extension_cls=...)`), called with `llm.collective_rpc`.

vLLM mixes this class into its Worker, so `self` is the worker: `self.model_runner`, `self.device`. The pattern is
the one vLLM's RLHF examples use; loading goes through the machinery of the model runner's `reload_weights`
(layerwise reload: initialize, the model's `load_weights`, finalize), which also works where weights were repacked at
load time (the CPU backend), unlike plain `load_weights`. Each reload reports the parameters it did not reach, which
the generator checks after a sleep that discarded the weights (vLLM itself only logs them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from rlx_vllm.transport import BucketMetadata, NamedTensorList, open_bucket, unpack_bucket

logger = logging.getLogger(__name__)


class RlxWorkerExtension:
    """Weight loading (one stream, or bucket by bucket) and the logprobs fix-up."""

    # Set by vLLM's Worker; declared for type checkers.
    model_runner: Any
    device: torch.device
    vllm_config: Any
    # Parameter names the model's load_weights reported since rlx_begin_reload (None: not told).
    _rlx_loaded: set[str] | None = None

    # ---------------------------------------------------------------------------------- in-process stream

    def rlx_reload_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> list[str] | None:
        """Load a whole stream of (HF name, full tensor) in place (what `model_runner.reload_weights` does with a
        weights iterator); returns what `rlx_finish_reload` returns.

        Only for a worker in the caller's process (the iterator is consumed lazily, never copied whole).
        """

        def on_device() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                yield name, tensor.to(self.device, non_blocking=True)

        self.rlx_begin_reload()
        self._load(on_device())
        return self.rlx_finish_reload()

    # ---------------------------------------------------------------------------------- bucket by bucket

    def rlx_begin_reload(self) -> None:
        """Start a streamed reload: layers buffer their weights and are processed once complete."""
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        self._rlx_loaded = set()
        self._with_config(lambda: initialize_layerwise_reload(self.model_runner.get_model()))

    def rlx_load_bucket(self, metadata: BucketMetadata, payload: bytes) -> int:
        """Load one packed bucket (between begin and finish); a layer may span several buckets.

        The bucket arrives as plain bytes + (name, dtype, shape) metadata: that is what survives vLLM's
        message encoding between processes (nested tensors do not).
        """
        flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        bucket = unpack_bucket(metadata, flat.to(self.device))
        self._load(bucket)
        return len(bucket)

    def rlx_load_bucket_ipc(self, metadata: BucketMetadata, handle: bytes) -> int:
        """Load one packed bucket that the trainer shared by handle (`rlx_vllm.transport`: a CUDA IPC handle or a
        shared-memory file) instead of sending its bytes; the worker copies it into its own memory first."""
        flat = open_bucket(handle, self.device, rank=int(getattr(self, "rank", 0)))
        bucket = unpack_bucket(metadata, flat)
        self._load(bucket)
        return len(bucket)

    def _load(self, weights: NamedTensorList | Iterable[tuple[str, torch.Tensor]]) -> None:
        loaded = self._with_config(lambda: self.model_runner.get_model().load_weights(weights))
        if loaded is None or self._rlx_loaded is None:  # a model whose load_weights reports nothing
            self._rlx_loaded = None
        else:
            self._rlx_loaded.update(loaded)

    def rlx_finish_reload(self) -> list[str] | None:
        """Process the layers still pending (attention, padded layers) and drop caches tied to old weights.

        Returns the model's parameters that no weight of this reload reached (sorted; [] when all were), the check
        `model_runner.reload_weights` only logs; None where it cannot be told: a quantized model (its parameters are
        renamed and repacked, as vLLM's own check knows) or a model whose `load_weights` reports nothing.
        """
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        model = self.model_runner.get_model()
        self._with_config(lambda: finalize_layerwise_reload(model, self.model_runner.model_config))
        for reset in ("reset_encoder_cache", "reset_mm_cache"):
            if hasattr(self.model_runner, reset):
                getattr(self.model_runner, reset)()
        loaded, self._rlx_loaded = self._rlx_loaded, None
        if loaded is None or self.model_runner.model_config.quantization is not None:
            return None
        return sorted({name for name, _ in model.named_parameters()} - loaded)

    def rlx_cannot_drop_weights(self) -> str | None:
        """Why this worker's weights should not be discarded at sleep (vLLM sleep level 2, the next push reloading
        them), or None. Level 2 keeps the model's named buffers only; everything else must come back with the push,
        and `rlx_finish_reload` can check that only for the parameters of an unquantized model."""
        model_config = self.model_runner.model_config
        if model_config.quantization is not None:
            return f"the model is quantized ({model_config.quantization}): a reload cannot be checked for completeness"
        if getattr(self.vllm_config, "speculative_config", None) is not None:
            return "speculative decoding is on: a weight push does not reload the draft model"
        if getattr(model_config, "is_multimodal_model", False):
            return "a multimodal model: vLLM's level-2 wake and reload is known to corrupt some (NVIDIA-NeMo/RL#2631)"
        return None

    # ---------------------------------------------------------------------------------- logprobs

    def rlx_logprobs_before_filtering(self) -> bool:
        """Make the sampler report log softmax(logits / T) taken before top-k/top-p filtering.

        vLLM's `processed_logprobs` are taken after temperature AND after top-k/top-p (renormalised over the
        kept tokens); rlx's contract (and the trainer) wants them before the filter. The sampler applies the
        temperature, then calls `topk_topp_sampler(logits, generators, k, p) -> (tokens, logprobs)`: we compute
        the log-softmax of its input first. Returns False (and changes nothing) where that structure is absent.
        """
        sampler = getattr(getattr(self.model_runner, "sampler", None), "topk_topp_sampler", None)
        if sampler is None or getattr(sampler, "_rlx_wrapped", False):
            return sampler is not None
        inner = sampler.forward

        def forward(logits: torch.Tensor, generators: Any, k: Any, p: Any) -> tuple[torch.Tensor, Any]:
            if k is None and p is None:  # no filter: processed == before filtering, save the extra softmax
                return inner(logits, generators, k, p)
            before = logits.log_softmax(dim=-1, dtype=torch.float32)  # (num_seqs, vocab)
            tokens, _ = inner(logits, generators, k, p)  # may filter `logits` in place
            return tokens, before

        sampler.forward = forward
        sampler._rlx_wrapped = True
        return True

    # ---------------------------------------------------------------------------------- helpers

    def _with_config(self, fn: Any) -> Any:
        # vLLM's weight loaders read the "current" vllm config (a context variable the worker sets).
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config), torch.no_grad():
            return fn()
