"""The engine benchmark runs end to end on a tiny setting and reports what docs/BENCHMARKS.md
records; the chart script draws it; the runner's step benchmark reports its median. Speed itself
is never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cpu_weights, decode_attention, engine_bench, plot_bench, runner_step
from server.model.weight_only import choose_kernel


def test_engine_bench_reports_every_variant_and_plots(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    code = engine_bench.main(["--batch", "1", "4", "--distinct", "2", "4", "--tokens", "3",
                              "--prompt-lengths", "8", "--rank", "4"])
    assert code == 0
    output = capsys.readouterr().out
    result = json.loads(output.strip().splitlines()[-1])  # the JSON line comes last
    assert result["bench"] == "engine" and result["quantization"] == "int4"  # the CPU default
    four = result["decode_tokens_per_s"]["4"]
    for key in ("base", "one_adapter", "distinct_2", "distinct_4", "merged", "peft_1", "peft_4"):
        assert four[key] > 0, key
    assert four["mixed_over_base"] == pytest.approx(four["distinct_4"] / four["base"])
    assert set(result["decode_tokens_per_s"]["1"]) >= {"base", "one_adapter", "merged"}
    assert "distinct_2" not in result["decode_tokens_per_s"]["1"]  # no mix wider than the batch
    assert result["ttft"]["8"]["base_s"] > 0 and result["adapter_load"]["host_to_slot_ms"] > 0
    burst = result["ttft_burst"]["8"]  # four adapters' prompts at once
    assert 0 < burst["p50_s"] <= burst["last_s"]
    assert result["merge_s"] > 0 and result["unmerge_s"] > 0

    saved = tmp_path / "engine.txt"
    saved.write_text(output)
    chart = tmp_path / "chart.png"
    assert plot_bench.main([str(saved), str(chart)]) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runner_step_reports_a_median_and_a_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner_step.main(["--batch", "2", "--steps", "3", "--prompt", "4", "--adapters", "2",
                             "--profile", "5", "--threads", "engine"]) == 0
    output = capsys.readouterr().out
    result = json.loads(output.strip().splitlines()[-1])
    assert result["bench"] == "runner_step" and result["batch"] == 2 and result["median_ms"] > 0
    assert result["adapters"] == 2 and result["threads"] == "engine"
    assert result["full_guards_median_ms"] is None  # guards compared only when asked
    assert result["bank_dtype"] == "float32"  # the server's, eager: float32 on a CPU
    # the profile's table names the int4 kernel the server would pick here
    kernel = {"torch": "_weight_int4pack_mm_for_cpu", "cameo": "cameo::int4_linear"}
    assert result["int_kernels"] == choose_kernel("auto")
    assert kernel[result["int_kernels"]] in output


def test_runner_step_times_the_prompt_forward_when_asked(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert runner_step.main(["--batch", "2", "--steps", "2", "--prompt", "6", "--adapters", "2",
                             "--prefill"]) == 0
    output = capsys.readouterr().out
    result = json.loads(output.strip().splitlines()[-1])
    assert result["forward"] == "prefill" and result["prompt"] == 6 and result["median_ms"] > 0
    assert "median prefill forward" in output


def test_runner_step_compares_guards_of_a_compiled_step_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        runner_step.main(["--batch", "1", "--compare-guards"])
    assert exit_info.value.code == 2
    assert "--compare-guards needs --compile" in capsys.readouterr().err


def test_runner_step_times_adapters_and_base_alone_in_one_process(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert runner_step.main(["--batch", "2", "--steps", "4", "--prompt", "4", "--adapters", "2",
                             "--against-base"]) == 0
    output = capsys.readouterr().out
    result = json.loads(output.strip().splitlines()[-1])
    assert result["median_ms"] > 0 and result["base_median_ms"] > 0
    assert result["base_over_adapters"] == pytest.approx(result["base_median_ms"] / result["median_ms"])
    assert "base alone" in output
    with pytest.raises(SystemExit) as exit_info:
        runner_step.main(["--batch", "1", "--against-base"])  # no adapters to compare
    assert exit_info.value.code == 2
    assert "--against-base needs --adapters" in capsys.readouterr().err


def test_decode_attention_times_each_form_and_they_agree(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert decode_attention.main(["--rows", "1", "3", "--context", "8", "24", "--layers", "2",
                                  "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "decode_attention" and result["layers"] == 2
    assert [(c["rows"], c["context"]) for c in result["cases"]] == [(1, 8), (3, 24)]
    for case in result["cases"]:
        for form in ("sdpa_eager", "sdpa_compiled", "one_query_compiled"):
            assert case[f"{form}_ms"] > 0
            assert case[f"{form}_max_diff"] < 1e-4  # float32; only the order of sums differs


def test_cpu_weights_reports_each_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert cpu_weights.main(["--rows", "1", "--repeats", "1", "--formats", "int4", "nf4",
                             "nf4_fused", "int4_cameo"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    steps = result["ms_per_step"]
    assert steps["int4"]["1"] > 0 and steps["nf4"]["1"] > 0
    assert result["speedup_over_nf4"]["int4"]["1"] == pytest.approx(
        steps["nf4"]["1"] / steps["int4"]["1"], rel=0.02)  # both rounded
    assert steps["int4_cameo"]["1"] > 0
    fused = steps["nf4_fused"]  # measured where bitsandbytes has it, said so where it has not
    assert isinstance(fused, dict) or fused.startswith("unavailable")
