"""The builtin `hf` generator: batched transformers `generate()` with per-token logprobs, in-place weight updates.

The reference implementation of `rlx.interfaces.Generator`: slow next to vLLM on a GPU, but dependency-free
and quick on a CPU with a tiny model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlx.builtin.configs import HFGeneratorConfig
from rlx.errors import did_you_mean
from rlx.generation import SeedStream, WeightPushGuard, check_request, special_tokens, stamp_version
from rlx.interfaces import Completion, FinishReason, ModelSpec, NamedTensors, SamplingParams
from rlx.threads import cpu_threads

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(*choices: str, device: torch.device) -> torch.dtype:
    """The first choice that is not `auto`; all `auto` -> bf16 on cuda, fp32 elsewhere."""
    for choice in choices:
        if choice != "auto":
            return _DTYPES[choice]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p set to -inf (both disabled: returned unchanged).

    logits: (B, V) float; top_k <= 0 and top_p >= 1 mean "disabled". At least one token always survives.
    """
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class _SampleAndRecord(LogitsProcessor):
    """Applies temperature/top-k/top-p itself and records each sampled token's logprob.

    HF's own warpers are switched off (temperature 1, top_k 0, top_p 1), so the order of processors inside
    transformers cannot change what we compute. At decoding step t the token picked at step t-1 is the last
    column of `input_ids`, so only one step of (B, V) log-probabilities is ever held, unlike
    `output_logits=True`, which keeps (steps, B, V) fp32 logits (tens of GB for long GPU rollouts).
    """

    def __init__(self, temperature: float, top_k: int, top_p: float) -> None:
        self.inv_temperature = 1.0 / temperature
        self.top_k = top_k
        self.top_p = top_p
        self.previous: torch.Tensor | None = None  # (B, V) fp32 log-softmax of the last step
        self.taken: list[torch.Tensor] = []  # per step, (B,) logprob of the sampled token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        logits = scores.float() * self.inv_temperature  # (B, V)
        self.previous = logits.log_softmax(dim=-1)
        return filter_logits(logits, self.top_k, self.top_p)  # type: ignore[return-value]

    def _take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.taken.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """(B, steps) logprobs, once generation is over and the last step's tokens are known."""
        self._take(last_tokens)
        self.previous = None
        return torch.stack(self.taken, dim=1)


class HFGenerator:
    """Implements `rlx.interfaces.Generator` with a transformers causal LM held in this process."""

    def __init__(self, config: HFGeneratorConfig, *, model: ModelSpec, seed: int) -> None:
        self.config = config
        self.spec = model
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, model.dtype, device=self.device)
        self.model = AutoModelForCausalLM.from_pretrained(
            model.path,
            dtype=self.dtype,
            trust_remote_code=model.trust_remote_code,
            **({"attn_implementation": config.attn_implementation} if config.attn_implementation else {}),
        )
        self.model.to(self.device).eval()
        tokens = special_tokens(model)
        self.eos_token_ids, self.pad_token_id = tokens.eos_ids, tokens.pad_id
        # The model's own generation_config (e.g. temperature 0.6, repetition penalty) must not leak into
        # sampling: every setting comes from SamplingParams.
        self.model.generation_config = GenerationConfig(
            eos_token_id=list(self.eos_token_ids), pad_token_id=self.pad_token_id
        )
        self._seeds = SeedStream(seed)
        self._guard = WeightPushGuard("generator 'hf'")
        self._asleep = False

    # ------------------------------------------------------------------------------------------ generate

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, `params.n` completions (stop token kept, logprobs under softmax(logits / T))."""
        self._check(prompts, params)
        self._guard.check()
        if self._asleep:
            raise RuntimeError("HFGenerator.generate called while asleep: call wake_up() first")
        # Rows are prompts repeated n times, sorted by length so each batch carries little left padding.
        rows = sorted(((len(p), i) for i, p in enumerate(prompts) for _ in range(params.n)), key=lambda r: r[0])
        results: list[list[Completion]] = [[] for _ in prompts]
        seed = self._seeds.resolve(params)
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode(), cpu_threads(self.device, self.config.cpu_threads):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[cuda[0]].manual_seed(seed)
            for start in range(0, len(rows), self.config.batch_size):
                batch = [i for _, i in rows[start : start + self.config.batch_size]]
                for i, completion in zip(batch, self._generate_batch([prompts[i] for i in batch], params), strict=True):
                    results[i].append(completion)
        return stamp_version(results, self._guard.version)

    def _check(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        check_request(prompts, params)

    def _generate_batch(self, prompts: list[Sequence[int]], params: SamplingParams) -> list[Completion]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row's next token is at column `width`
            input_ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        greedy = params.temperature == 0
        stop_ids = tuple(dict.fromkeys((*self.eos_token_ids, *params.stop_token_ids)))
        # greedy: logprobs at temperature 1, and filtering could not change the argmax
        recorder = (
            _SampleAndRecord(1.0, -1, 1.0)
            if greedy
            else _SampleAndRecord(params.temperature, params.top_k, params.top_p)
        )
        # temperature, top_k and top_p are applied by `recorder`: HF's own warpers stay off
        sampling = (
            {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if not greedy else {"do_sample": False}
        )
        generation_config = GenerationConfig(
            **sampling,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=0,
            eos_token_id=list(stop_ids),
            pad_token_id=self.pad_token_id,
            use_cache=True,
            cache_implementation=self.config.cache_implementation,
            return_dict_in_generate=False,
        )
        sequences = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            generation_config=generation_config,
            logits_processor=LogitsProcessorList([recorder]),
        )  # (B, width + steps)
        generated = sequences[:, width:]
        logprobs = recorder.finish(generated[:, -1]).cpu()  # (B, steps)
        generated = generated.cpu()
        is_stop = torch.isin(generated, torch.tensor(stop_ids))
        completions = []
        for row in range(len(prompts)):
            stops = is_stop[row].nonzero()
            # rows finished early are padded after their stop token; keep up to and including it
            end = int(stops[0]) + 1 if len(stops) else generated.shape[1]
            reason: FinishReason = "stop" if len(stops) else "length"
            completions.append(
                Completion(
                    token_ids=tuple(generated[row, :end].tolist()),
                    logprobs=tuple(logprobs[row, :end].tolist()),
                    finish_reason=reason,
                )
            )
        return completions

    # ------------------------------------------------------------------------------------------ weights

    def update_weights(self, weights: NamedTensors, version: int | None = None) -> None:
        """Copy each (HF name, full tensor) into the matching parameter or buffer, in place, as it arrives."""
        with self._guard.push(version):
            self._copy_in(weights)

    @torch.no_grad()
    def _copy_in(self, weights: NamedTensors) -> None:
        # remove_duplicate=False lists every name of a tied tensor (lm_head.weight and embed_tokens.weight)
        targets = dict(self.model.named_parameters(remove_duplicate=False))
        targets.update(self.model.named_buffers(remove_duplicate=False))
        for name, tensor in weights:
            target = targets.get(name)
            if target is None:
                raise KeyError(
                    f"update_weights: the model has no parameter named '{name}'{did_you_mean(name, targets)} "
                    f"(expected Hugging Face names such as '{next(iter(targets))}')"
                )
            if target.shape != tensor.shape:
                raise ValueError(
                    f"update_weights: '{name}' has shape {tuple(tensor.shape)}, the model's is {tuple(target.shape)}"
                )
            target.copy_(tensor)  # casts dtype and moves device without keeping a second copy

    # ------------------------------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """Move the weights to CPU and free the CUDA cache (no-op on CPU). HF keeps no KV cache between calls."""
        if self.device.type == "cuda" and not self._asleep:
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self._asleep = self.device.type == "cuda"

    def wake_up(self) -> None:
        if self._asleep:
            self.model.to(self.device)
        self._asleep = False

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
