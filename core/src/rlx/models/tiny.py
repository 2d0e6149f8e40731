"""Build tiny Qwen2-shaped models and tokenizers locally (no downloads), for tests, benchmarks and CPU demos.

`tiny_model(dir)` builds the default tokenizer + random-weight model in about a second. (`builtin:tiny`, the
embedded default, is built from these pieces by `rlx.models.embedded`, trained on the run's environment.)
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# The Qwen2.5 chat format: every message is "<|im_start|>{role}\n{content}<|im_end|>\n".
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# vLLM's CPU attention kernels only support these head sizes; the tiny model must be loadable there too.
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 192, 256)

# Bump when the builder's output changes, so a cached `builtin:tiny` is rebuilt.
TINY_VERSION = "1"


def default_corpus(num_problems: int = 400, seed: int = 0) -> list[str]:
    """A small built-in corpus: chat-formatted arithmetic with `\\boxed{}` answers plus some plain English."""
    rng = random.Random(seed)
    texts = [
        "Let's think step by step.",
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "The answer is correct. The answer is wrong. So the final answer is",
        "What is the sum of the numbers? Compute the product, the difference and the quotient.",
        "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 + - * / = ( ) { } [ ] . , ? ! \\ ^ _",
    ]
    for _ in range(num_problems):
        a, b = rng.randint(0, 99), rng.randint(1, 99)
        op = rng.choice("+-*/")
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        question = f"What is {a} {op} {b}?"
        answer = f"We compute {a} {op} {b} = {value}.\nThe answer is \\boxed{{{value}}}."
        texts.append(f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n{answer}{IM_END}\n")
    return texts


def build_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike[str] | None = None, *, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (every byte is encodable; digits are split one per token).

    Special tokens: `<|endoftext|>` (pad, id 0), `<|im_start|>` (1), `<|im_end|>` (eos, 2), and a Qwen-style
    chat template. Saved with `save_pretrained(out_dir)` when `out_dir` is given.
    """
    tokenizer = Tokenizer(models.BPE())
    # Qwen splits numbers into single digits; arithmetic rewards are easier to learn that way.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_qwen2(
    out_dir: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    init_std: float = 0.02,
    eos_logit_bias: float | None = None,
) -> str:
    """A random-weight `Qwen2ForCausalLM` saved (fp32 safetensors + tokenizer + generation config) in `out_dir`.

    head_dim = hidden_size / num_heads must be one of SUPPORTED_HEAD_DIMS (vLLM CPU kernels). `init_std` scales
    the random weights (larger gives peakier next-token distributions). `eos_logit_bias` (logit units, roughly)
    wires the weights so EOS gets that much extra logit at every position: a model that stops early, for tests.
    Returns `out_dir` as a string.
    """
    if hidden_size % num_heads or hidden_size // num_heads not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"hidden_size / num_heads = {hidden_size}/{num_heads} must be a head_dim in {SUPPORTED_HEAD_DIMS}"
        )
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos_id is None or pad_id is None:
        raise ValueError("the tokenizer needs an eos and a pad token (build it with build_tokenizer)")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        tie_word_embeddings=tie_word_embeddings,
        use_sliding_window=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    if eos_logit_bias is not None:
        _wire_eos_bias(model, eos_id, eos_logit_bias)
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=True
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return str(out)


@torch.no_grad()
def _wire_eos_bias(model: Qwen2ForCausalLM, eos_id: int, bias: float) -> None:
    """Turn residual channel 0 into a constant "bias" unit and point EOS's output row at it.

    Every input embedding gets 1.0 in channel 0 and no layer writes to channel 0 (zero rows in o_proj and
    down_proj), so after the final RMSNorm channel 0 is positive at every position. The final norm's channel-0
    gain is calibrated so that the normalised channel averages 1, then the lm_head column 0 is zero except
    `bias` at EOS. With tied embeddings the column is 1 everywhere (a uniform shift, invisible to softmax)
    and 1 + bias at EOS.
    """
    embed = model.model.embed_tokens.weight  # (V, H)
    embed[:, 0] = 1.0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[0].zero_()
        layer.mlp.down_proj.weight[0].zero_()
    gen = torch.Generator().manual_seed(1234)
    probe = torch.randint(0, embed.shape[0], (4, 32), generator=gen)
    model.model.norm.weight[0] = 1.0
    normed = model.model(input_ids=probe).last_hidden_state[..., 0]  # (4, 32)
    model.model.norm.weight[0] = 1.0 / normed.mean()
    if model.config.tie_word_embeddings:
        embed[eos_id, 0] = 1.0 + bias
    else:
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[eos_id, 0] = bias


def tiny_model(
    out_dir: str | os.PathLike[str], *, seed: int = 0, eos_logit_bias: float | None = None, **model_kwargs: object
) -> str:
    """Tokenizer (trained on `default_corpus()`) + tiny Qwen2 in `out_dir`; returns the folder path."""
    tokenizer = build_tokenizer(default_corpus())
    return build_tiny_qwen2(out_dir, tokenizer, seed=seed, eos_logit_bias=eos_logit_bias, **model_kwargs)  # type: ignore[arg-type]
