"""The builtin `fsdp` trainer: PyTorch FSDP2 (`fully_shard` per decoder layer, then the root) over
torch.distributed, gloo on CPU and NCCL on GPU. One rank per process; `rlx.cluster` runs several.

Gradients are SUMMED over micro-batches and ranks (TrainBatch.loss_weights carry the normalisation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.interfaces import ModelSpec, PolicyLossFn, TokenBatch, TrainBatch
from rlx.outputs import check_replaceable, replace_folder
from rlx.threads import cpu_threads

TRAINER_STATE_FILE = "trainer_state.pt"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------------------------ model pieces


class _LMHeadLogprobs(torch.autograd.Function):
    """LM head + log-softmax on one chunk of tokens, with a hand-written backward.

    Saves only the chunk's hidden states and log-partition (never the (n, V) logits): backward recomputes
    the logits once and forms d logp / d logits = onehot(target) - softmax directly. Also returns the
    entropy of each next-token distribution (a metric: no gradient).
    hidden: (n, H), weight: (V, H), bias: (V,) or None, targets: (n,) int64
    -> log p(target) (n,) float32, entropy (n,) float32 (empty when not asked for).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        inv_temperature: float,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _scaled_logits(hidden, weight, bias, inv_temperature)  # (n, V) float32
        log_z = torch.logsumexp(logits, dim=-1)  # (n,)
        target_logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - log_z
        entropy = logits.new_empty(0)
        if with_entropy:  # H = log Z - sum_v p_v * logit_v
            probs = torch.exp(logits - log_z[:, None])
            entropy = log_z - torch.bmm(probs[:, None, :], logits[:, :, None]).view(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.inv_temperature = inv_temperature
        ctx.mark_non_differentiable(entropy)
        return target_logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor, _grad_entropy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        # d logp_target / d logit_v = onehot_v - p_v, times inv_temperature for logits / T
        probs = _scaled_logits(hidden, weight, bias, ctx.inv_temperature).sub_(log_z[:, None]).exp_()
        scale = grad_logprobs.to(probs.dtype) * ctx.inv_temperature  # (n,)
        grad_logits = probs.mul_(-scale[:, None])
        grad_logits.scatter_add_(1, targets[:, None], scale[:, None])
        grad_logits = grad_logits.to(hidden.dtype)  # (n, V)
        grad_hidden = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.t() @ hidden if ctx.needs_input_grad[1] else None
        grad_bias = grad_logits.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _scaled_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, inv_temperature: float
) -> torch.Tensor:
    """(n, H) -> (n, V) float32 logits / temperature (matmul in the compute dtype, softmax math in fp32)."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits if inv_temperature == 1.0 else logits.mul_(inv_temperature)


class PolicyLogprobs(nn.Module):
    """The FSDP root: HF decoder, then the LM head applied chunk by chunk over tokens.

    Wrapping the whole computation in one root `forward` lets FSDP2's root hooks gather (and reduce the
    gradients of) the embeddings, final norm and LM head around it. Each chunk's logits are freed after
    its forward and recomputed in backward, so at most one chunk of (tokens, vocab) logits is alive.
    """

    def __init__(self, hf_model: nn.Module, chunk_tokens: int) -> None:
        super().__init__()
        self.hf = hf_model
        self.chunk_tokens = chunk_tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids, attention_mask: (b, T) -> logprobs (b, T) float32 aligned to input_ids (column 0 is 0),
        entropy (b, T) float32 (or None) of the next-token distribution that predicted each token.
        attention_mask None means plain causal attention (exact for right-padded rows, see `_attention_mask`)."""
        decoder = getattr(self.hf, self.hf.base_model_prefix)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        b, t, h = hidden.shape
        flat_hidden = hidden[:, :-1].reshape(-1, h)  # position t-1 predicts token t
        flat_targets = input_ids[:, 1:].reshape(-1)
        head = self.hf.get_output_embeddings()
        logprob_chunks, entropy_chunks = [], []
        for start in range(0, flat_hidden.shape[0], self.chunk_tokens):
            args = (
                flat_hidden[start : start + self.chunk_tokens],
                head.weight,
                head.bias,
                flat_targets[start : start + self.chunk_tokens],
                1.0 / temperature,
                with_entropy,
            )
            lp, ent = _LMHeadLogprobs.apply(*args)
            logprob_chunks.append(lp)
            entropy_chunks.append(ent)
        logprobs = F.pad(torch.cat(logprob_chunks).view(b, t - 1), (1, 0))
        entropy = F.pad(torch.cat(entropy_chunks).view(b, t - 1), (1, 0)) if with_entropy else None
        return logprobs, entropy


def _checkpointed(forward: Any) -> Any:
    """Wrap a decoder layer's forward so its activations are recomputed in backward (names unchanged)."""

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def _decoder_layers(hf_model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (the model's `_no_split_modules` classes): one FSDP unit each."""
    names = set(getattr(hf_model, "_no_split_modules", None) or ())
    layers = [m for m in hf_model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(hf_model).__name__} (_no_split_modules={names})")
    return layers


def _take_rows(batch: TokenBatch, rows: slice | torch.Tensor) -> TokenBatch:
    """The same batch type with only `rows` of every (B, ...) tensor field."""
    values = {
        f.name: (v[rows] if isinstance(v := getattr(batch, f.name), torch.Tensor) else v)
        for f in dataclasses.fields(batch)
    }
    return type(batch)(**values)


def _to_device(batch: TokenBatch, device: torch.device) -> TokenBatch:
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in values.items()})


def _take_columns(batch: TokenBatch, width: int) -> TokenBatch:
    """The first `width` columns of every (B, T) tensor field."""
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(
        **{k: (v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 else v) for k, v in values.items()}
    )


def _padding_batch(batch: TokenBatch, rows: int) -> TokenBatch:
    """`rows` sequences that run the same collectives as real ones but contribute nothing (zero loss weights).

    Copies of the shard's first row when it has one (real tokens, no fully masked attention row), else
    sequences of token 0 with every position attended.
    """
    width = max(int(batch.input_ids.shape[1]), 2)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if not isinstance(value, torch.Tensor):
            values[f.name] = value
        elif len(batch):
            values[f.name] = value[:1].expand(rows, *value.shape[1:]).clone()
        else:
            shape = (rows, width) if value.dim() == 2 else (rows,)
            values[f.name] = torch.zeros(shape, dtype=value.dtype)
    if not len(batch):
        values["attention_mask"] = torch.ones(rows, width, dtype=batch.attention_mask.dtype)
    if values.get("loss_weights") is not None:
        values["loss_weights"] = torch.zeros_like(values["loss_weights"])
    if values.get("advantages") is not None:
        values["advantages"] = torch.zeros_like(values["advantages"])
    return type(batch)(**values)


def _attention_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """None (plain causal attention) when every row is right-padded, else `mask`.

    With causal attention a real token never sees the pad tokens to its right, so for right-padded rows
    the padding mask changes nothing that is scored, and without it SDPA can use its flash kernel.
    mask: (b, T) on CPU.
    """
    lengths = mask.sum(-1, keepdim=True)
    right_padded = torch.equal(mask.bool(), torch.arange(mask.shape[1])[None, :] < lengths)
    return None if right_padded else mask


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # one GPU per process: the local rank's
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() if dist.is_initialized() else 0))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def _init_single_process_group(device: torch.device) -> None:
    """A 1-rank group on a private FileStore (no port to pick, nothing to clash with)."""
    fd, store_path = tempfile.mkstemp(prefix="rlx-pg-")
    os.close(fd)
    os.unlink(store_path)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.FileStore(store_path, 1), rank=0, world_size=1)


# ------------------------------------------------------------------------------------------ the trainer


class FSDPTrainer:
    """Implements `rlx.interfaces.Trainer` with FSDP2; built in every trainer process (one rank each).

    Master weights, gradients and optimizer state are fp32 and sharded; on GPU the forward/backward runs
    in bf16 with fp32 gradient reduction. `train_step` also accepts `temperature` (the sampling
    temperature the old log-probabilities were computed at; default 1.0).
    """

    def __init__(self, config: FSDPTrainerConfig, *, model: ModelSpec, seed: int, with_reference: bool = False) -> None:
        self.config = config
        self.spec = model
        self._owns_group = not dist.is_initialized()
        self.device = _resolve_device(config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self._owns_group:
            _init_single_process_group(self.device)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if config.dtype == "auto":
            self.compute_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.compute_dtype = _DTYPES[config.dtype]
        self.model_path = model.path
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        torch.manual_seed(seed)

        self.policy = self._build_model(trainable=True)
        self.reference = self._build_model(trainable=False) if with_reference else None
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.optimizer_steps = 0

    # ---------------------------------------------------------------------------------------- building

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up from warmup_start_factor to 1 over warmup_steps optimizer steps, then constant."""
        warmup, start = self.config.warmup_steps, self.config.warmup_start_factor
        if step >= warmup:
            return 1.0
        return start + (1.0 - start) * step / warmup

    def _build_model(self, *, trainable: bool) -> PolicyLogprobs:
        from transformers import AutoModelForCausalLM

        # Trainable: fp32 master weights, cast to the compute dtype by FSDP. Frozen reference: stored in the
        # compute dtype directly (it has no optimizer, and halves its memory on GPU).
        load_dtype = torch.float32 if trainable else self.compute_dtype
        hf_model = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            dtype=load_dtype,
            attn_implementation="sdpa",
            trust_remote_code=self.spec.trust_remote_code,
        )
        hf_model.eval()  # no dropout: trainer and generator must score tokens the same way
        hf_model.requires_grad_(trainable)
        mp_policy = MixedPrecisionPolicy(
            param_dtype=self.compute_dtype if self.compute_dtype != load_dtype else None,
            reduce_dtype=torch.float32,
        )
        shard = functools.partial(
            fully_shard,
            mesh=self.mesh,
            mp_policy=mp_policy,
            reshard_after_forward=self.config.reshard_after_forward,
        )
        for layer in _decoder_layers(hf_model):
            if trainable and self.config.activation_checkpointing:
                layer.forward = _checkpointed(layer.forward)
            shard(layer)
        root = PolicyLogprobs(hf_model, self.config.logits_chunk_tokens)
        shard(root)
        if trainable:
            # Sum (not average) gradients over ranks: loss_weights already hold the global normalisation.
            for module in root.modules():
                if isinstance(module, FSDPModule):
                    module.set_gradient_divide_factor(1.0)
                    module.set_force_sum_reduction_for_comms(True)
        return root

    # ---------------------------------------------------------------------------------------- helpers

    def _num_micro_batches(self, rows: int) -> int:
        """The same count on every rank (FSDP collectives): the largest shard's."""
        count = torch.tensor([math.ceil(rows / self.config.micro_batch_size)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    def _micro_batches(self, batch: TokenBatch) -> Iterator[tuple[TokenBatch, torch.Tensor | None, int]]:
        """(micro-batch on device trimmed to its last attended column, the attention mask to use (None:
        plain causal), real rows in it); the padding micro-batches, if any, come last."""
        size = self.config.micro_batch_size
        cpu_mask = batch.attention_mask.cpu()
        # one host-to-device copy (and stream sync) per call, not one per micro-batch
        on_device = _to_device(batch, self.device)
        for index in range(self._num_micro_batches(len(batch))):
            start = index * size
            real = max(0, min(size, len(batch) - start))
            if real:
                micro, rows_mask = _take_rows(on_device, slice(start, start + real)), cpu_mask[start : start + real]
            else:
                padding = _padding_batch(batch, 1)
                micro, rows_mask = _to_device(padding, self.device), padding.attention_mask.cpu()
            # columns past the last attended token of every row only cost compute
            width = max(int((rows_mask.bool() * torch.arange(1, rows_mask.shape[1] + 1)).max()), 2)
            micro = _take_columns(micro, width)
            yield micro, (None if _attention_mask(rows_mask[:, :width]) is None else micro.attention_mask), real

    def _hf(self, root: nn.Module) -> nn.Module:
        return root.hf  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------- Trainer

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0, reference: bool = False) -> torch.Tensor:
        """(B, T) float32 on CPU: log p(input_ids[b, t] | input_ids[b, :t]) on logits / temperature,
        0 outside completion_mask."""
        with cpu_threads(self.device, self.config.cpu_threads):
            return self._logprobs(batch, temperature=temperature, reference=reference)

    def _logprobs(self, batch: TokenBatch, *, temperature: float, reference: bool) -> torch.Tensor:
        if reference and self.reference is None:
            raise ValueError("reference log-probabilities asked for, but the trainer was built with_reference=False")
        model = self.reference if reference else self.policy
        assert model is not None
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=self.device)
        start = 0
        with torch.no_grad():
            for micro, mask, real in self._micro_batches(batch):
                logprobs, _ = model(micro.input_ids, mask, temperature, False)
                if real:
                    out[start : start + real, : logprobs.shape[1]] = logprobs[:real]
                    start += real
        # one device-to-host copy at the end: a copy per micro-batch would stall the GPU each time
        result = out.cpu() * batch.completion_mask.cpu().to(torch.float32)
        del out
        self._release_cached_memory()
        return result

    def _release_cached_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float = 1.0) -> dict[str, float]:
        """One AdamW step on `batch`; returns loss, grad_norm, lr, entropy and loss_fn's metrics, each
        summed over micro-batches and ranks (so loss_weights-weighted means)."""
        with cpu_threads(self.device, self.config.cpu_threads):
            return self._train_step(batch, loss_fn, temperature=temperature)

    def _train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float) -> dict[str, float]:
        if batch.loss_weights is None:
            raise ValueError("train_step needs a TrainBatch with loss_weights")
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor) -> None:
            value = value.detach().to(torch.float64)
            sums[name] = sums[name] + value if name in sums else value

        for micro, mask, _ in self._micro_batches(batch):
            assert isinstance(micro, TrainBatch) and micro.loss_weights is not None
            new_logprobs, entropy = self.policy(micro.input_ids, mask, temperature, True)
            # zero outside the completion, like `logprobs()`; the loss only sees what it should
            new_logprobs = new_logprobs * micro.completion_mask.to(new_logprobs.dtype)
            loss, metrics = loss_fn(new_logprobs, micro)
            if not loss.requires_grad:  # e.g. nothing to learn from here: still run backward (collectives)
                loss = loss + 0.0 * new_logprobs.sum()
            loss.backward()
            add("loss", loss)
            add("entropy", (entropy * micro.loss_weights).sum())
            for name, value in metrics.items():
                add(name, torch.as_tensor(value))

        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        if torch.isfinite(grad_norm):
            self.optimizer.step()
        else:  # a NaN/inf step would poison the weights: skip it (reported through grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.optimizer_steps += 1
        # gradients are not needed until the next step: free them, and hand cached blocks back to the driver so a
        # colocated generator can wake its KV cache on the same GPU
        self.optimizer.zero_grad(set_to_none=True)
        self._release_cached_memory()

        names = sorted(sums)
        packed = torch.stack([sums[name].to(self.device) for name in names])
        dist.all_reduce(packed)
        result = {name: float(value) for name, value in zip(names, packed.tolist(), strict=True)}
        result["grad_norm"] = float(grad_norm)
        result["lr"] = float(lr)
        return result

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor in the compute dtype, on this trainer's device), one at a time.

        Every rank must consume the iterator (each tensor is all-gathered). Tied weights are yielded
        once, under their first name (as save_pretrained writes them).
        """
        seen: set[int] = set()
        for name, value in self._hf(self.policy).state_dict(keep_vars=True).items():
            if id(value) in seen:
                continue
            seen.add(id(value))
            full = value.full_tensor() if isinstance(value, DTensor) else value
            yield name, full.detach().to(self.compute_dtype)

    def save_checkpoint(self, path: str) -> None:
        """Sharded DCP checkpoint (model + optimizer) + LR schedule and step counter, written to
        `<path>.tmp` then renamed. Loadable with any number of ranks."""
        model_state, optim_state = get_state_dict(self.policy, self.optimizer)
        tmp = f"{path.rstrip('/')}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            Path(tmp).mkdir(parents=True)
        dist.barrier()
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)
        if self.rank == 0:
            state = {"scheduler": self.scheduler.state_dict(), "optimizer_steps": self.optimizer_steps}
            torch.save(state, Path(tmp) / TRAINER_STATE_FILE)
            _replace_dir(tmp, path, kind="trainer-checkpoint")
        dist.barrier()

    def load_checkpoint(self, path: str) -> None:
        """Restore model, optimizer, LR schedule and step counter from `save_checkpoint`'s folder."""
        state_file = Path(path) / TRAINER_STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"not an rlx fsdp trainer checkpoint (no {TRAINER_STATE_FILE}): {path}")
        import torch.distributed.checkpoint as dcp

        model_state, optim_state = get_state_dict(self.policy, self.optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(
            self.policy, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        trainer_state = torch.load(state_file, weights_only=True)
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        self.optimizer_steps = int(trainer_state["optimizer_steps"])

    def export_hf(self, path: str) -> None:
        """Rank 0 writes a Hugging Face folder (safetensors in the compute dtype, config, tokenizer,
        generation config) to `<path>.tmp`, then renames it; every rank takes part in the gather. An existing `path`
        that rlx did not write is never replaced (rlx.outputs)."""
        check_replaceable(path, kind="hf-export", what="export_hf path")
        full = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

            prefix = "hf."
            state = {k.removeprefix(prefix): v.to(self.compute_dtype) for k, v in full.items()}
            config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.spec.trust_remote_code)
            with torch.device("meta"):
                hf_model = AutoModelForCausalLM.from_config(
                    config, dtype=self.compute_dtype, trust_remote_code=self.spec.trust_remote_code
                )
            hf_model.load_state_dict(state, strict=False, assign=True)
            hf_model.tie_weights()
            try:
                hf_model.generation_config = GenerationConfig.from_pretrained(self.model_path)
            except OSError:
                hf_model.generation_config = GenerationConfig.from_model_config(config)
            tokenizer_path = self.spec.tokenizer_path
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=self.spec.trust_remote_code)
            tmp = f"{path.rstrip('/')}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            hf_model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            _replace_dir(tmp, path, kind="hf-export")
        dist.barrier()

    def close(self) -> None:
        """Free the models and optimizer; destroy the process group only if this trainer created it."""
        self.policy = self.reference = None  # type: ignore[assignment]
        self.optimizer = self.scheduler = None  # type: ignore[assignment]
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _replace_dir(src: str, dst: str, kind: str) -> None:
    """Move `src` to `dst`, marked as rlx's; a previous `dst` is removed only once the new one is in place, and one
    rlx did not write is never replaced (rlx.outputs)."""
    replace_folder(src, dst, kind=kind, what="trainer output")
