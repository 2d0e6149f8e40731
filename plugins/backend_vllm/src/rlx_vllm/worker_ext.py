"""Methods rlx adds to every vLLM worker (`LLM(worker_extension_cls=...)`), called with `llm.collective_rpc`.

vLLM mixes this class into its Worker, so `self` is the worker: `self.model_runner`, `self.device`. The pattern is
the one vLLM's RLHF examples use; loading goes through the model runner's `reload_weights` machinery (layerwise
reload), which also works where weights were repacked at load time (the CPU backend), unlike plain `load_weights`.
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

    # ---------------------------------------------------------------------------------- in-process stream

    def rlx_reload_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load a whole stream of (HF name, full tensor) in place; returns how many tensors were loaded.

        Only for a worker in the caller's process (the iterator is consumed lazily, never copied whole).
        """
        counter = [0]

        def on_device() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                counter[0] += 1
                yield name, tensor.to(self.device, non_blocking=True)

        self._with_config(lambda: self.model_runner.reload_weights(weights_iterator=on_device()))
        return counter[0]

    # ---------------------------------------------------------------------------------- bucket by bucket

    def rlx_begin_reload(self) -> None:
        """Start a streamed reload: layers buffer their weights and are processed once complete."""
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        self._with_config(lambda: initialize_layerwise_reload(self.model_runner.get_model()))

    def rlx_load_bucket(self, metadata: BucketMetadata, payload: bytes) -> int:
        """Load one packed bucket (between begin and finish); a layer may span several buckets.

        The bucket arrives as plain bytes + (name, dtype, shape) metadata: that is what survives vLLM's
        message encoding between processes (nested tensors do not).
        """
        flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        return self._load(unpack_bucket(metadata, flat.to(self.device)))

    def rlx_load_bucket_ipc(self, metadata: BucketMetadata, handle: bytes) -> int:
        """Load one packed bucket that the trainer shared by handle (`rlx_vllm.transport`: a CUDA IPC handle or a
        shared-memory file) instead of sending its bytes; the worker copies it into its own memory first."""
        flat = open_bucket(handle, self.device, rank=int(getattr(self, "rank", 0)))
        return self._load(unpack_bucket(metadata, flat))

    def _load(self, bucket: NamedTensorList) -> int:
        self._with_config(lambda: self.model_runner.get_model().load_weights(bucket))
        return len(bucket)

    def rlx_finish_reload(self) -> None:
        """Process the layers still pending (attention, padded layers) and drop caches tied to old weights."""
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        self._with_config(
            lambda: finalize_layerwise_reload(self.model_runner.get_model(), self.model_runner.model_config)
        )
        for reset in ("reset_encoder_cache", "reset_mm_cache"):
            if hasattr(self.model_runner, reset):
                getattr(self.model_runner, reset)()

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
