"""A random-weight Llama of a published model's shapes, to time the engine at sizes other than
the embedded model's.

    python -m benchmarks.random_model smollm2-1.7b /tmp/smollm2-1.7b
    CAMEO_BASE_MODEL=/tmp/smollm2-1.7b python -m benchmarks.runner_step --batch 8 --adapters 8 \\
        --compile --threads engine --steps 40 --against-base

Writes a Hugging Face folder (config, bfloat16 safetensors, the embedded model's tokenizer and
chat template) that `CAMEO_BASE_MODEL` can name. The weights are drawn from N(0, 0.02^2), as
transformers initializes a Llama: what it says is noise, but every matmul has the real model's
shapes, which is all a speed measurement needs. The shapes are the named models' published
configurations (`SHAPES`), whose vocabulary is the embedded tokenizer's.

What it does not do: download anything, or say anything about output quality.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from server.model.embedded import ensure_converted
from server.settings import default_cache_dir

SHAPES: dict[str, dict[str, Any]] = {
    # HuggingFaceTB/SmolLM2-1.7B-Instruct
    "smollm2-1.7b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=8192, rope_theta=130000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5),
    # HuggingFaceTB/SmolLM2-360M-Instruct
    "smollm2-360m": dict(vocab_size=49152, hidden_size=960, intermediate_size=2560,
                         num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                         max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json")


def write(shape: dict[str, Any], folder: Path, seed: int = 0) -> int:
    """Write a random Llama of `shape` (LlamaConfig's arguments) and the embedded model's
    tokenizer into `folder`; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    embedded = ensure_converted(default_cache_dir())
    special = json.loads((embedded / "config.json").read_text())
    config = LlamaConfig(**shape, bos_token_id=special.get("bos_token_id"),
                         eos_token_id=special.get("eos_token_id"))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (embedded / name).exists():
            shutil.copy(embedded / name, folder / name)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(f"writing a random {args.shape} into {args.folder} (about 25 s for 1.7B on 2 cores)",
          flush=True)
    parameters = write(SHAPES[args.shape], args.folder, args.seed)
    print(json.dumps({"bench": "random_model", "shape": args.shape, "folder": str(args.folder),
                      "parameters": parameters,
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
