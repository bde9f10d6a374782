"""benchmarks/bank_fidelity.py: the report covers every shipped persona's sequence, and storing
the adapters as bfloat16 or int8 moves the logits less than quantizing the base does (the claim
docs/BENCHMARKS.md makes for the compiled int4 step's int8 bank)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bank_fidelity


def test_a_stored_bank_moves_the_logits_less_than_the_4_bit_base(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bank_fidelity.main([]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    shipped = sorted(p.name for p in bank_fidelity.REGISTRY.iterdir()
                     if (p / "persona.json").exists())
    assert result["personas"] == shipped and result["positions"] > 50 * len(shipped)
    base = result["unquantized_base"]
    for bank in ("bfloat16", "int8"):
        measures = result[bank]
        assert 0 < measures["mean_abs_diff"] < base["mean_abs_diff"]
        assert measures["max_abs_diff"] < base["max_abs_diff"]
