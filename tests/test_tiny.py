"""The local tiny-model builder: tokenizer coverage and chat template, model shape, EOS wiring, caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlx.models import tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny.tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_tokenizer_round_trips_math_text(tiny_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = "Compute 12 + 7 - 3 * 4 / 2.\nThe answer is \\boxed{19}. Zebra quiz!"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    # digits are one token each (no multi-digit merges)
    digits = [t for t in tok.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert digits and all(len(t) == 1 for t in digits)
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_special_tokens_and_chat_template(tiny_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_start|>") not in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_prompt = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert not no_prompt.endswith("assistant\n")
    ids = tok(text)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.eos_token_id) == 2


def test_model_config_and_weights(tiny_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    config = json.loads((Path(tiny_dir) / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["eos_token_id"] == tok.eos_token_id and config["pad_token_id"] == tok.pad_token_id
    assert config["vocab_size"] == len(tok)
    generation = json.loads((Path(tiny_dir) / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.eos_token_id
    with safe_open(str(Path(tiny_dir) / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    logits = model(torch.tensor([tok("What is 1 + 1?")["input_ids"]])).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    tok = tiny.build_tokenizer(tiny.default_corpus(50), vocab_size=300)
    a = AutoModelForCausalLM.from_pretrained(tiny.build_tiny_qwen2(tmp_path / "a", tok, seed=3))
    b = AutoModelForCausalLM.from_pretrained(tiny.build_tiny_qwen2(tmp_path / "b", tok, seed=3))
    c = AutoModelForCausalLM.from_pretrained(tiny.build_tiny_qwen2(tmp_path / "c", tok, seed=4))
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_rejects_unsupported_head_dim(tmp_path: Path) -> None:
    tok = tiny.build_tokenizer(tiny.default_corpus(10), vocab_size=300)
    with pytest.raises(ValueError, match="head_dim"):
        tiny.build_tiny_qwen2(tmp_path, tok, hidden_size=100, num_heads=2)


@pytest.mark.parametrize("tie", [False, True])
def test_eos_logit_bias_makes_eos_likely(tmp_path: Path, tie: bool) -> None:
    tok = tiny.build_tokenizer(tiny.default_corpus(50))
    plain = AutoModelForCausalLM.from_pretrained(tiny.build_tiny_qwen2(tmp_path / "p", tok, tie_word_embeddings=tie))
    biased = AutoModelForCausalLM.from_pretrained(
        tiny.build_tiny_qwen2(tmp_path / "b", tok, tie_word_embeddings=tie, eos_logit_bias=8.0)
    )
    ids = torch.tensor([tok("What is 3 + 4? We compute")["input_ids"]])
    p_plain = plain(ids).logits.softmax(-1)[0, :, tok.eos_token_id]
    p_biased = biased(ids).logits.softmax(-1)[0, :, tok.eos_token_id]
    assert p_plain.max() < 0.05
    # +8 logits over ~500 near-uniform tokens: p(eos) = e^8 / (e^8 + 500) ~ 0.86
    assert p_biased.min() > 0.6
