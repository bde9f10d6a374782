"""Tiny random models of every family the test matrix serves, built on the CPU in seconds.

Each is a two-layer decoder (hidden 64, four query heads over two KV heads, head_dim 16) with the
embedded model's tokenizer, saved as a Hugging Face folder so that `load_base` loads it like any
user's base, in `none` or `nf4`. Weights are drawn with a larger spread than transformers'
default so that logits have clear argmaxes. Every family gets the variant that makes it
different: a sliding window shorter than the test prompts, soft-capping, q/k norms, scaled
embeddings and logits, fused projections, a non-SiLU activation, biases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WINDOW = 6  # sliding windows are shorter than every test prompt

COMMON: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=256, initializer_range=0.15,
                              rms_norm_eps=1e-6, tie_word_embeddings=False)

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (config class in transformers, what differs from COMMON)
    "llama-gqa-tied": ("LlamaConfig", dict(tie_word_embeddings=True)),
    "llama-gelu-bias": ("LlamaConfig", dict(hidden_act="gelu_pytorch_tanh", attention_bias=True,
                                            mlp_bias=True)),
    "mistral-sliding": ("MistralConfig", dict(sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=False)),
    "qwen3": ("Qwen3Config", dict()),
    "gemma2": ("Gemma2Config", dict(sliding_window=WINDOW, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=10.0, query_pre_attn_scalar=24,
                                    hidden_activation="gelu_pytorch_tanh")),
    "gemma3": ("Gemma3TextConfig", dict(sliding_window=WINDOW, query_pre_attn_scalar=24,
                                        layer_types=["sliding_attention", "full_attention"])),
    "phi3": ("Phi3Config", dict(pad_token_id=0)),
    "granite": ("GraniteConfig", dict(embedding_multiplier=3.0, logits_scaling=2.0,
                                      residual_multiplier=0.5, attention_multiplier=0.2)),
    "olmo2": ("Olmo2Config", dict()),
}


def build_family(name: str, folder: Path, tokenizer: Any, seed: int = 0) -> Path:
    """Write the tiny random model `name` (and `tokenizer`) into `folder`; returns it."""
    import transformers
    from transformers import AutoModelForCausalLM

    class_name, overrides = FAMILIES[name]
    config_class = getattr(transformers, class_name)
    config = config_class(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, **{**COMMON, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms away from 1 so that their weights matter
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
