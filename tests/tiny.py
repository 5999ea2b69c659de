"""Tiny random-weight models of several architectures, built from configs (no downloads), and a
tiny byte-level BPE tokenizer with a ChatML template trained in-process."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import steerlab

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I love sunny days and I hate the rain.",
    "Question: what is the capital of France? Answer: Paris.",
    "Choices: (A) yes (B) no. The answer is (A).",
    "Weddings, brides and grooms; flowers and cake at the reception.",
    "Steering vectors change activations inside a language model.",
] * 4
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def _configs(vocab: int) -> dict:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    return {
        "llama": LlamaConfig(**common),
        "mistral": MistralConfig(**common),
        "qwen2": Qwen2Config(**common),
        "qwen3": Qwen3Config(**common, head_dim=8),
        "gemma": GemmaConfig(**common, head_dim=8),
        "gemma2": Gemma2Config(**common, head_dim=8),
        "gemma3": Gemma3TextConfig(**common, head_dim=8, sliding_window=64),
        "phi3": Phi3Config(**common),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=256,
                           bos_token_id=1, eos_token_id=2),
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                  num_attention_heads=4, max_position_embeddings=256, bos_token_id=1,
                                  eos_token_id=2),
        "opt": OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                         max_position_embeddings=256, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
    }


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox", "opt"]


@functools.cache
def tiny_model(family: str) -> steerlab.SteerModel:
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = _configs(len(tok))[family]
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    # Random init is small; scale weights up a little so steering visibly moves the outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(3.0)
    return steerlab.load_model(model, tokenizer=tok)
