"""plot_bench reads serve_bench's peer JSON line into one series per server (a scenario a
server did not run is absent, never zero) and writes a PNG for it and for engine_bench's line;
any other JSON line is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import plot_bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(tokens_per_s: float, ttft: float | None) -> dict[str, Any]:
    return {"requests": 8, "failed": 0, "tokens_per_s": tokens_per_s, "ttft_p50_s": ttft}


def _peer() -> dict[str, Any]:
    """A small peer JSON line as serve_bench.py prints it: vLLM runs no eight_*/base_single."""
    return {
        "bench": "serve", "suite": "peer", "model": "tiny", "tokens": 8, "requests": 16,
        "concurrency": 8, "machine": "x86_64 2 cores", "date": "2026-12-05",
        "servers": {
            "vllm_bf16": {"base": _run(160.0, 0.4), "one_adapter": _run(60.0, 1.4),
                          "eight_adapters": _run(62.0, 1.4), "peak_rss_mb": 900},
            "llamacpp_q4_0": {"base": _run(270.0, 0.38), "eight_adapters": _run(95.0, 2.3),
                              "eight_concurrent": _run(94.0, 2.5),
                              "eight_sequential": _run(91.0, 0.09),
                              "base_single": _run(140.0, 0.06)},
            "cameo_default": {"base": _run(200.0, 0.2), "eight_adapters": _run(176.0, 0.29),
                              "eight_concurrent": _run(155.0, 0.52),
                              "eight_sequential": _run(40.0, None),  # every request failed
                              "base_single": _run(74.0, 0.07)},
        },
        "ratios": {"cameo_default_mixed_over_own_base": 0.88},
    }


def test_peer_series_holds_each_servers_runs_and_leaves_missing_ones_out() -> None:
    table = plot_bench.peer_series(_peer())
    assert list(table) == ["vllm_bf16", "llamacpp_q4_0", "cameo_default"]  # the JSON's order
    assert table["vllm_bf16"] == {"base": 160.0, "eight_adapters": 62.0}  # one_adapter: not drawn
    assert table["llamacpp_q4_0"] == {"base": 270.0, "eight_adapters": 95.0,
                                      "eight_concurrent": 94.0, "eight_sequential": 91.0,
                                      "base_single": 140.0}
    assert table["cameo_default"]["eight_concurrent"] == 155.0
    assert set(table["cameo_default"]) == set(plot_bench.PEER_SCENARIOS)


def test_peer_ttft_series_skips_null_and_servers_without_the_scenario() -> None:
    result = _peer()
    ttft = plot_bench.peer_series(result, "ttft_p50_s", ("eight_concurrent", "eight_sequential"))
    assert ttft == {"llamacpp_q4_0": {"eight_concurrent": 2.5, "eight_sequential": 0.09},
                    "cameo_default": {"eight_concurrent": 0.52}}  # null TTFT: absent, vLLM: none


def test_server_labels_are_readable() -> None:
    assert plot_bench.server_label("llamacpp_q4_0") == "llama.cpp (Q4_0)"
    assert plot_bench.server_label("vllm_bf16") == "vLLM CPU (bf16)"
    assert plot_bench.server_label("cameo_int4_eager") == "Cameo int4, eager"
    assert plot_bench.server_label("something_new") == "something_new"


def test_group_offsets_centre_the_bars() -> None:
    assert plot_bench.group_offsets(1, 0.2) == [0.0]
    assert plot_bench.group_offsets(3, 0.2) == pytest.approx([-0.2, 0.0, 0.2])


def test_kind_tells_the_lines_apart_and_refuses_others() -> None:
    assert plot_bench.kind(_peer()) == "peer"
    assert plot_bench.kind({"bench": "engine", "decode_tokens_per_s": {}}) == "engine"
    with pytest.raises(SystemExit, match="no chart"):
        plot_bench.kind({"bench": "serve", "suite": "zipf", "servers": {}})


def test_peer_chart_is_drawn_from_the_saved_output(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image
    saved = tmp_path / "peer.log"
    saved.write_text("llama.cpp ...\n  base: 270 tokens/s\n" + json.dumps(_peer()) + "\n")
    chart = tmp_path / "charts" / "peer.png"
    assert plot_bench.main([str(saved), str(chart)]) == 0
    data = chart.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    image = matplotlib.image.imread(chart)
    assert image.shape[0] > 100 and image.shape[1] > image.shape[0]  # two panels, side by side


def test_peer_bars_match_the_series() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    plot_bench.plot_peer(_peer(), fig)
    left, right = fig.axes

    def heights(ax: Any) -> list[float]:
        return sorted(float(bar.get_height()) for bar in ax.patches)

    expected = sorted(v for runs in plot_bench.peer_series(_peer()).values() for v in runs.values())
    assert len(expected) == 2 + 5 + 5  # no zero bar for vLLM's missing runs
    assert heights(left) == expected
    assert heights(right) == [0.52, 2.5]
    legend = left.get_legend()
    assert legend is not None
    assert [text.get_text() for text in legend.get_texts()] == [
        "vLLM CPU (bf16)", "llama.cpp (Q4_0)", "Cameo default"]
    plt.close(fig)


def test_engine_chart_still_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    row = {"base": 150.0, "one_adapter": 140.0, "distinct_8": 100.0, "peft_1": 150.0,
           "peft_8": 70.0, "merged": 250.0}
    result = {"bench": "engine", "model": "tiny", "quantization": "int4", "machine": "cpu",
              "rank": 16, "decode_tokens_per_s": {"1": {"base": 6.0}, "64": row}}
    saved = tmp_path / "engine.json"
    saved.write_text(json.dumps(result) + "\n")
    chart = tmp_path / "engine.png"
    assert plot_bench.main([str(saved), str(chart)]) == 0
    assert chart.read_bytes()[:8] == PNG_MAGIC and chart.stat().st_size > 1000
