"""The builtin `fsdp` trainer: PyTorch FSDP2 (`fully_shard` per decoder layer, then the root) over
torch.distributed, gloo on CPU and NCCL on GPU. One rank per process; `rlx.cluster` runs several.

Gradients are SUMMED over micro-batches and ranks (TrainBatch.loss_weights carry the normalisation), and reduced
once per optimizer step (after the last micro-batch). With `max_tokens_per_micro_batch` the rows of a call are
unpadded and packed into token-budget micro-batches (`rlx.builtin.fsdp_batches`, `rlx.packing`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rlx.builtin.configs import FSDPTrainerConfig
from rlx.builtin.fsdp_batches import MicroBatch, map_fields, packed_micro_batch, padded_micro_batch
from rlx.builtin.fsdp_model import (
    VARLEN_ATTENTION,
    VARLEN_SDPA_ATTENTION,
    PolicyLogprobs,
    checkpointed,
    decoder_layers,
    register_varlen_attention,
)
from rlx.errors import ConfigError
from rlx.interfaces import ModelSpec, PolicyLossFn, TokenBatch, TrainBatch
from rlx.outputs import check_replaceable, replace_folder
from rlx.packing import first_fit_decreasing, token_budget_bins
from rlx.threads import cpu_threads

TRAINER_STATE_FILE = "trainer_state.pt"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_MICRO_BATCH_ROWS = 8
#: trainer.attention values that run rlx's own attention function (with the sequence bounds), by registered name
VARLEN_NAMES = {"varlen": VARLEN_ATTENTION, "varlen_sdpa": VARLEN_SDPA_ATTENTION}


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
        budget = config.max_tokens_per_micro_batch
        if budget is not None and model.max_seq_len > budget:
            raise ConfigError(
                f"model.max_seq_len ({model.max_seq_len}) is longer than trainer.max_tokens_per_micro_batch "
                f"({budget}): a sequence that long would not fit one micro-batch. Set "
                f"trainer.max_tokens_per_micro_batch >= {model.max_seq_len}"
            )
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

        reshard = config.reshard_after_forward
        #: ZeRO-3 between micro-batches; on one rank the gathered weights are only a cast copy, kept through a call
        self.reshard_after_forward = self.world_size > 1 if reshard == "auto" else reshard
        self.packed = budget is not None
        self.compiled = config.compile is True or (config.compile == "auto" and self.device.type == "cuda")
        if self.packed and config.attention in VARLEN_NAMES:
            register_varlen_attention()
        #: trainer.cuda_stream=own: where logprobs/train_step/named_weights queue their kernels
        own_stream = config.cuda_stream == "own" and self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if own_stream else None
        self.policy = self._build_model(trainable=True)
        self.reference = self._build_model(trainable=False) if with_reference else None
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",  # one kernel per step instead of several per parameter group
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.optimizer_steps = 0
        #: this rank's last logprobs/train_step call: micro_batches, real_tokens, computed_tokens (positions the
        #: decoder ran on: real + padding), for benchmarks and metrics
        self.last_call: dict[str, int] = {}

    # ---------------------------------------------------------------------------------------- building

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up from warmup_start_factor to 1 over warmup_steps optimizer steps, then constant."""
        warmup, start = self.config.warmup_steps, self.config.warmup_start_factor
        if step >= warmup:
            return 1.0
        return start + (1.0 - start) * step / warmup

    def _attn_implementation(self) -> str:
        if not self.packed:
            return "sdpa"
        return VARLEN_NAMES.get(self.config.attention, self.config.attention)

    def _build_model(self, *, trainable: bool) -> PolicyLogprobs:
        from transformers import AutoModelForCausalLM

        # Trainable: fp32 master weights, cast to the compute dtype by FSDP (bf16 parameters measured no faster on
        # one H200: docs/benchmarks.md). Frozen reference: stored in the compute dtype directly (no optimizer).
        load_dtype = torch.float32 if trainable else self.compute_dtype
        hf_model = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            dtype=load_dtype,
            attn_implementation=self._attn_implementation(),
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
            reshard_after_forward=self.reshard_after_forward,
        )
        checkpointing = self.config.activation_checkpointing if trainable else False
        for layer in decoder_layers(hf_model):
            if checkpointing == "selective":  # inside the compiled function: dynamo traces the per-op policy
                layer.forward = checkpointed(layer.forward, selective=True)
            if self.compiled:
                layer.forward = torch.compile(layer.forward, dynamic=True)
            if checkpointing is True:
                layer.forward = checkpointed(layer.forward)
            shard(layer)
        root = PolicyLogprobs(hf_model, self.config.logits_chunk_tokens, compile_head=self.compiled)
        shard(root)
        if trainable:
            # Sum (not average) gradients over ranks: loss_weights already hold the global normalisation.
            for module in root.modules():
                if isinstance(module, FSDPModule):
                    module.set_gradient_divide_factor(1.0)
                    module.set_force_sum_reduction_for_comms(True)
        return root

    # ---------------------------------------------------------------------------------------- micro-batches

    def _agree_on_count(self, local: int) -> int:
        """The same number of micro-batches on every rank (FSDP collectives): the largest, at least 1."""
        count = torch.tensor([max(local, 1)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    def _plan(self, batch: TokenBatch, token_budget: int | None) -> list[list[int]]:
        """Rows of each micro-batch (some may be empty: padding), as many on every rank."""
        row_cap = self.config.micro_batch_size
        if token_budget is None:
            size = row_cap or DEFAULT_MICRO_BATCH_ROWS
            count = self._agree_on_count(math.ceil(len(batch) / size))
            return [list(range(start, min(start + size, len(batch)))) for start in range(0, count * size, size)]
        lengths = batch.attention_mask.sum(-1).tolist()
        too_long = [(row, length) for row, length in enumerate(lengths) if length > token_budget]
        if too_long:
            row, length = max(too_long, key=lambda item: item[1])
            which = "max_tokens_per_micro_batch" if token_budget == self.config.max_tokens_per_micro_batch else (
                "logprob_max_tokens_per_micro_batch"
            )
            raise ConfigError(
                f"{len(too_long)} sequence(s) are longer than the micro-batch token budget: row {row} has {length} "
                f"tokens, trainer.{which} is {token_budget}. Set trainer.{which} >= {length} (and >= "
                "model.max_seq_len)"
            )
        count = self._agree_on_count(len(first_fit_decreasing(lengths, token_budget, row_cap)))
        return token_budget_bins(lengths, token_budget, count, row_cap)

    def _micro_batches(self, batch: TokenBatch, token_budget: int | None) -> Iterator[MicroBatch]:
        """The call's micro-batches on the device, built one at a time (the CPU work overlaps the GPU's)."""
        cpu = map_fields(batch, lambda v: v.cpu())
        on_device = map_fields(cpu, lambda v: v.to(self.device, non_blocking=True))  # one copy per field per call
        varlen = self.config.attention in VARLEN_NAMES
        plan = self._plan(cpu, token_budget)
        self.last_call = {"micro_batches": len(plan), "real_tokens": 0, "computed_tokens": 0}
        for rows in plan:
            if token_budget is None:
                micro = padded_micro_batch(cpu, on_device, rows, device=self.device)
            else:
                micro = packed_micro_batch(cpu, on_device, rows, varlen=varlen, device=self.device,
                                           host_bounds=self.config.attention == "varlen_sdpa")  # fmt: skip
            self.last_call["real_tokens"] += micro.tokens
            self.last_call["computed_tokens"] += int(micro.input_ids.numel())
            yield micro

    def _forward(
        self, model: PolicyLogprobs, micro: MicroBatch, temperature: float, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(S,) log-probabilities of the micro-batch's scored tokens, and their entropies (or empty)."""
        return model(
            micro.input_ids,
            micro.position_ids,
            micro.attention_mask,
            micro.score_index,
            temperature,
            with_entropy,
            micro.attention_kwargs,
        )

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        """Queue this block's kernels on the trainer's own stream (trainer.cuda_stream=own), after what the caller's
        stream has queued; a no-op otherwise. logprobs and train_step end in a host copy of their results, so their
        work is done when they return."""
        if self.stream is None:
            yield
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            yield

    def _hand_over(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor made on the trainer's own stream, made safe to use on the caller's: that stream waits for it, and
        its memory is not reused before the work the caller queues on it is done."""
        if self.stream is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_stream(self.stream)
            tensor.record_stream(consumer)
        return tensor

    def _hf(self, root: PolicyLogprobs) -> torch.nn.Module:
        return root.hf

    def _finish_call(self, root: PolicyLogprobs) -> None:
        """Free gathered weights (kept between micro-batches when reshard_after_forward is off) and hand cached
        blocks back to the driver once per call, so a colocated generator can wake its KV cache on the GPU."""
        for module in root.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------- Trainer

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0, reference: bool = False) -> torch.Tensor:
        """(B, T) float32 on CPU: log p(input_ids[b, t] | input_ids[b, :t]) on logits / temperature,
        0 outside completion_mask."""
        with cpu_threads(self.device, self.config.cpu_threads), self._on_stream():
            return self._logprobs(batch, temperature=temperature, reference=reference)

    def _logprobs(self, batch: TokenBatch, *, temperature: float, reference: bool) -> torch.Tensor:
        if reference and self.reference is None:
            raise ValueError("reference log-probabilities asked for, but the trainer was built with_reference=False")
        model = self.reference if reference else self.policy
        assert model is not None
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for micro in self._micro_batches(batch, self.config.logprob_token_budget):
                logprobs, _ = self._forward(model, micro, temperature, False)
                if micro.tokens:  # not a padding micro-batch
                    out.index_put_((micro.rows.index_select(0, micro.scatter_rows), micro.scatter_cols), logprobs)
        # one device-to-host copy at the end: a copy per micro-batch would stall the GPU each time
        result = out.cpu()
        del out
        self._finish_call(model)
        return result

    def train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float = 1.0) -> dict[str, float]:
        """One AdamW step on `batch`; returns loss, grad_norm, lr, entropy and loss_fn's metrics, each
        summed over micro-batches and ranks (so loss_weights-weighted means)."""
        with cpu_threads(self.device, self.config.cpu_threads), self._on_stream():
            return self._train_step(batch, loss_fn, temperature=temperature)

    def _train_step(self, batch: TrainBatch, loss_fn: PolicyLossFn, *, temperature: float) -> dict[str, float]:
        if batch.loss_weights is None:
            raise ValueError("train_step needs a TrainBatch with loss_weights")
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor) -> None:
            value = value.detach().to(torch.float64)
            sums[name] = sums[name] + value if name in sums else value

        micro_batches = list(self._micro_batches(batch, self.config.max_tokens_per_micro_batch))
        keep_gathered = not self.reshard_after_forward
        for index, micro in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            # reduce gradients once per step; keep the weights gathered between micro-batches if asked to
            self.policy.set_requires_gradient_sync(last)
            if keep_gathered:
                self.policy.set_reshard_after_backward(last)
            fields = micro.batch
            assert isinstance(fields, TrainBatch) and fields.loss_weights is not None
            logprobs, entropy = self._forward(self.policy, micro, temperature, True)
            new_logprobs = micro.scatter(logprobs)  # (n, width), zero outside the scored completion tokens
            loss, metrics = loss_fn(new_logprobs, fields)
            if not loss.requires_grad:  # e.g. nothing to learn from here: still run backward (collectives)
                loss = loss + 0.0 * logprobs.sum()
            loss.backward()
            add("loss", loss)
            add("entropy", (micro.scatter(entropy) * fields.loss_weights).sum())
            for name, value in metrics.items():
                add(name, torch.as_tensor(value))
        del micro_batches

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
        # gradients are not needed until the next step: free them (memory for a colocated generator)
        self.optimizer.zero_grad(set_to_none=True)
        self._finish_call(self.policy)

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
            with self._on_stream():
                full = value.full_tensor() if isinstance(value, DTensor) else value
                full = full.detach().to(self.compute_dtype)
            yield name, self._hand_over(full)

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
