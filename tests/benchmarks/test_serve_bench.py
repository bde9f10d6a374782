"""The HTTP benchmark drives a real Cameo server process end to end (tiny settings; slow suite),
and pairs its rounds (a pure function: default suite). vLLM and llama.cpp are left out: the peers
need their own multi-GB installs and builds (vLLM's the benchmark does on demand; llama.cpp's pure
parts are in test_llamacpp_peer.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import serve_bench


def _result(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return dict(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))


@pytest.mark.slow
def test_peer_suite_reports_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_bench.main(["peer", "--skip-vllm", "--only", "cameo_float32", "--requests", "4",
                             "--tokens", "4", "--rounds", "2"]) == 0
    result = _result(capsys)
    runs = result["servers"]["cameo_float32"]
    peak = runs.pop("peak_rss_mb")
    paired = runs.pop("mixed_over_base_rounds")
    assert len(paired) == 2 and all(ratio > 0 for ratio in paired)
    assert result["ratios"]["cameo_float32_mixed_over_own_base_paired_median"] == \
        pytest.approx(sum(paired) / 2)
    for name in ("base", "one_adapter", "eight_adapters"):
        speeds = runs[name]["rounds_tokens_per_s"]
        assert len(speeds) == 2 and runs[name]["tokens_per_s"] == max(speeds)
    assert 300 < peak < 20_000  # the server process's own peak (the model alone is ~0.5 GB)
    assert set(runs) == {"base", "one_adapter", "eight_adapters", "eight_sequential",
                         "eight_concurrent", "base_single"}
    for name, run in runs.items():
        expected = 8 * 4 if name.startswith("eight_") and name != "eight_adapters" else 4 * 4
        assert run["failed"] == 0 and run["tokens"] == expected, (name, run)
        assert run["ttft_p50_s"] > 0 and run["itl_p50_s"] > 0
    assert result["ratios"]["cameo_float32_concurrent_over_sequential"] > 0
    assert result["ratios"]["cameo_float32_eight_concurrent_ttft_p50_s"] > 0
    assert set(result["servers"]) == {"cameo_float32"}  # --only leaves out the peers


def test_median_rounds_picks_each_scenarios_middle_round_and_pairs_mixed_with_base() -> None:
    def summary(speed: float) -> dict[str, Any]:
        return {"tokens_per_s": speed, "ttft_p50_s": 1 / speed}

    rounds = {"base": [summary(s) for s in (100, 120, 90)],
              "one_adapter": [summary(s) for s in (80, 85, 70)],
              "eight_adapters": [summary(s) for s in (90, 96, 81)]}
    out = serve_bench.median_rounds(rounds)
    assert out["base"] == {**summary(100), "rounds_tokens_per_s": [100, 120, 90]}
    assert out["eight_adapters"]["tokens_per_s"] == 90
    assert out["mixed_over_base_rounds"] == pytest.approx([0.9, 0.8, 0.9])
    assert "mixed_over_base_rounds" not in serve_bench.median_rounds(
        {name: runs[:1] for name, runs in rounds.items()})


@pytest.mark.slow
def test_zipf_suite_serves_every_registered_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_bench.main(["zipf", "--registered", "1", "3", "--requests", "6", "--tokens", "4",
                             "--concurrency", "4", "--rate", "4"]) == 0
    result = _result(capsys)
    assert set(result["registered"]) == {"1", "3"}
    for run in result["registered"].values():
        assert run["failed"] == 0 and run["tokens"] == 6 * 4
    assert result["registered"]["1"]["distinct_in_trace"] == 1
    assert result["ratios"]["1_over_1"] == 1.0
