"""benchmarks/random_model.py: the folder it writes is a base the server loads (int4, as the
CPU serves it), with the shapes asked for and the embedded model's tokenizer and special ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import random_model
from server.model.loader import load_base
from server.settings import Settings

# SmolLM2-360M's proportions (grouped kv heads, tied head) at a size a test can load
SMALL = dict(random_model.SHAPES["smollm2-360m"], hidden_size=96, intermediate_size=256,
             num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2)


def test_the_written_folder_loads_as_a_base_of_the_shapes_asked(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    parameters = random_model.write(SMALL, folder)
    loaded = load_base(Settings(base_model=str(folder), device="cpu", quantization="int4"))
    config = loaded.model.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_key_value_heads, config.vocab_size) == (96, 256, 2, 2, 49152)
    embedding_and_norms = 49152 * 96 + (2 * 2 + 1) * 96  # tied head: counted once
    attention = 2 * 96 * 96 + 2 * 96 * (96 // 6 * 2)  # q, o; k, v over two kv heads
    assert parameters == embedding_and_norms + 2 * (attention + 3 * 96 * 256)
    assert loaded.eos_token_ids == frozenset({2})
    ids = loaded.tokenizer("Hello there", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids).logits  # (1, T, vocab)
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    assert (folder / "chat_template.jinja").exists()


def test_the_command_names_its_shape_and_count(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(random_model.SHAPES, "small", SMALL)
    assert random_model.main(["small", str(tmp_path / "m"), "--seed", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["bench"], result["shape"]) == ("random_model", "small")
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))  # the tied head once
    assert result["parameters"] == sum(t.numel() for t in stored.values())
