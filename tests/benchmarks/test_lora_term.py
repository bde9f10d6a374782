"""benchmarks/lora_term.py: the compiled decode-row LoRA term it times (rows on distinct adapters,
and on one) is each row's own adapter's term, and its report adds up."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import lora_term


def test_the_timed_term_is_each_rows_own_adapters_and_the_report_adds_up(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert lora_term.main(["--rows", "4", "--adapters", "3", "--layers", "2",
                           "--repeats", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["bench"], result["rows"], result["adapters"], result["layers"]) == (
        "lora_term", 4, 3, 2)
    # against each row's term in float32: the bfloat16 bank rounds x @ A^T and the output once
    # each (half an ulp apiece, relative); a row reading another slot's adapter would be off by
    # the term's own size
    bound = 4 * torch.finfo(torch.bfloat16).eps
    assert result["max_rel_diff"] <= bound and result["max_rel_diff_eager"] <= bound
    in_out = sum(i + o for i, o in lora_term.PROJECTIONS.values())  # A and B widths, per layer
    layers, bfloat16_bytes = 2, 2
    assert result["adapter_mb"] == round(layers * in_out * lora_term.RANK * bfloat16_bytes / 1e6, 3)
    assert result["distinct_ms"] > 0 and result["one_adapter_ms"] > 0 and result["read_gbps"] > 0
