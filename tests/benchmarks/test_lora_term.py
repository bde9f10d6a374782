"""benchmarks/lora_term.py: the compiled decode-row LoRA term it times (rows on distinct adapters,
and on one) is each row's own adapter's term, and its report adds up."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import lora_term


@pytest.mark.parametrize("bank", ["int8", "bfloat16"])
def test_the_timed_term_is_each_rows_own_adapters_and_the_report_adds_up(
        bank: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert lora_term.main(["--rows", "4", "--adapters", "3", "--layers", "2",
                           "--repeats", "3", "--bank", bank]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["bench"], result["bank"], result["rows"], result["adapters"],
            result["layers"]) == ("lora_term", bank, 4, 3, 2)
    # against each row's term in float32 from the values the bank holds: a bfloat16 bank
    # rounds x @ A^T and the output once each (half an ulp apiece, relative), an int8 one
    # computes in float32 and rounds the output once; a row reading another slot's adapter
    # would be off by the term's own size
    bound = 4 * torch.finfo(torch.bfloat16).eps
    assert result["max_rel_diff"] <= bound and result["max_rel_diff_eager"] <= bound
    # against the adapters as written: the storage's own rounding on top, half a level of 255
    # per int8 row (twice: A and B), half an ulp per bfloat16 value
    stored = 2 / 254 if bank == "int8" else torch.finfo(torch.bfloat16).eps
    assert result["max_rel_diff_vs_adapters"] <= bound + 4 * stored
    in_out = sum(i + o for i, o in lora_term.PROJECTIONS.values())  # A and B widths, per layer
    layers, value_bytes = 2, {"int8": 1, "bfloat16": 2}[bank]
    scale_bytes = 4 * len(lora_term.PROJECTIONS) if bank == "int8" else 0  # per rank
    assert result["adapter_mb"] == round(
        layers * (in_out * value_bytes + scale_bytes) * lora_term.RANK / 1e6, 3)
    assert result["distinct_ms"] > 0 and result["one_adapter_ms"] > 0 and result["read_gbps"] > 0
