"""Tiny models built from configs (random weights) and saved to folders, so every
`from_pretrained` path is exercised offline. They share the packaged MiniLM tokenizer
(a real WordPiece vocabulary) so that text round-trips through real tokenisation."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    T5Model,
)

from multitask_retriever.models import packaged_minilm_path

VOCAB = 30522  # the MiniLM WordPiece vocabulary


def _tokenizer():
    return AutoTokenizer.from_pretrained(packaged_minilm_path())


def _t5_config() -> T5Config:
    return T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, pad_token_id=0, eos_token_id=102, decoder_start_token_id=0,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )


def _save(model, path: Path) -> Path:
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


def make_tiny_t5(path: Path) -> Path:
    """Encoder-decoder T5 (the dual encoder's default backbone family)."""
    torch.manual_seed(0)
    return _save(T5Model(_t5_config()), path)


def make_tiny_t5_encoder(path: Path) -> Path:
    torch.manual_seed(0)
    return _save(T5EncoderModel(_t5_config()), path)


def make_tiny_t5_lm(path: Path) -> Path:
    """Seq2seq LM (T5 family) for LLM rerankers."""
    torch.manual_seed(0)
    return _save(T5ForConditionalGeneration(_t5_config()), path)


def make_tiny_bert(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return _save(BertModel(cfg), path)


def make_tiny_gpt2(path: Path) -> Path:
    """GPT-2-style causal LM."""
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=512,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=101, eos_token_id=102,
        pad_token_id=0,
    )
    return _save(GPT2LMHeadModel(cfg), path)


def make_tiny_llama(path: Path) -> Path:
    """Llama-architecture causal LM (the family of the packaged SmolLM2)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=101, eos_token_id=102, pad_token_id=0,
    )
    return _save(LlamaForCausalLM(cfg), path)
