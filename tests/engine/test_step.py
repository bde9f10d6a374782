"""The engine step: decode tokens and prefill chunks in one forward, bucketed (CUDA) or exact
(the CPU), reading nothing back from the device, the same compiled or eager.

A tiny random Llama with three adapters of different ranks in its slot bank; rows prefilled at
different lengths, in cache rows that are not 0..B-1. The step (one-token entries on a
`StepGrid` straight over the cache rows, prefill chunks packed) is checked against the runner's
ragged forward of the same tokens (every position's logits, a gathered copy of each row's
keys), eager and compiled with `fullgraph=True`, which raises on any graph break.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.engine.step import (
    DECODING_BESIDE_PREFILL,
    ONE_ROW_DECODING,
    ROWS_DECODING,
    SEGMENT_CELLS,
    EngineStep,
    StepLayout,
    StepShape,
    bucket,
    packed_width,
    segment_count,
    should_compile,
)
from server.lora.slots import LoraSlots

MAX_ROWS = 8
MAX_LEN = 48
TOL = 1e-4  # float32 on both sides; only the order of the attention's sums differs
HOST_SYNCS = {"aten::item", "aten::_local_scalar_dense", "aten::equal", "aten::nonzero",
              "aten::is_nonzero"}


def _model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _runner(model: torch.nn.Module, compile: bool, kv_capacity: int = MAX_LEN) -> ModelRunner:
    bank = LoraSlots(module_shapes(model), 3, 16, torch.float32, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    for index, rank in enumerate((16, 8, 4), start=1):
        bank.ranks[index] = rank  # written by hand, so the real rank too (LoraSlots.write)
        for key in bank.a:
            bank.a[key][index, :rank].normal_(0, 0.2, generator=generator)
            bank.b[key][index, :, :rank].normal_(0, 0.2, generator=generator)
    return ModelRunner(model, bank, MAX_ROWS, MAX_LEN, torch.float32, torch.device("cpu"),
                       compile=compile, kv_capacity=kv_capacity)


@pytest.fixture(scope="module")
def runners() -> tuple[ModelRunner, ModelRunner, ModelRunner]:
    """An eager runner, a compiled one and a reference, over one module tree."""
    model = _model()
    return _runner(model, False), _runner(model, True), _runner(model, False)


ROWS = [6, 0, 3, 5]
SLOTS = [1, 0, 2, 3]
PROMPTS = [[5, 9, 2], [7] * 11, [1, 2, 3, 4, 5, 6], [42]]


def _prefill(runner: ModelRunner) -> torch.Tensor:
    return runner.forward(ForwardBatch(PROMPTS, ROWS, [0] * len(ROWS), SLOTS))


def _reference_step(runner: ModelRunner, tokens: list[int], rows: list[int],
                    positions: list[int], slots: list[int]) -> torch.Tensor:
    """The same decode as one-token rows of the ragged forward (all_logits takes that path)."""
    batch = ForwardBatch([[t] for t in tokens], rows, positions, slots)
    return runner.forward(batch, all_logits=True)[:, 0]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_decode_steps_match_the_ragged_forward(runners: tuple[ModelRunner, ...],
                                               compiled: bool) -> None:
    runner, reference = runners[1 if compiled else 0], runners[2]
    assert (runner.step.compiled is not None) is compiled
    _prefill(runner)
    _prefill(reference)
    positions = [len(p) for p in PROMPTS]
    tokens = [11, 12, 13, 14]
    for step in range(4):
        # every row, then two rows (grid rows with no entry), then one (a size of its own)
        live = [0, 1, 2, 3] if step < 2 else ([0, 2] if step == 2 else [3])
        args = ([tokens[i] for i in live], [ROWS[i] for i in live],
                [positions[i] for i in live], [SLOTS[i] for i in live])
        got = runner.forward(ForwardBatch([[t] for t in args[0]], args[1], args[2], args[3]))
        expected = _reference_step(reference, *args)
        assert got.shape == expected.shape == (len(live), 128)
        torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
        for i, token in zip(live, got.argmax(-1).tolist(), strict=True):
            tokens[i], positions[i] = token, positions[i] + 1


def _reference_last(runner: ModelRunner, batch: ForwardBatch) -> torch.Tensor:
    """Each chunk's last-token logits from the ragged forward (every position's logits)."""
    logits = runner.forward(batch, all_logits=True)  # (B, T, vocab)
    return torch.stack([logits[b, n - 1] for b, n in enumerate(batch.lengths)])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_prefill_chunks_beside_decoding_rows_match_the_ragged_forward(
        runners: tuple[ModelRunner, ...], compiled: bool) -> None:
    """A step of prefill chunks alone, then one where two rows decode beside a prompt's second
    chunk (from position 5) and a new prompt, then every row decoding over what those wrote:
    each the same logits as the ragged forward of the same tokens, in one forward each, and
    no new graph when compiled."""
    runner, reference = runners[1 if compiled else 0], runners[2]
    new_prompt = [8, 9, 10, 31]
    steps = [
        ForwardBatch([PROMPTS[0], PROMPTS[1][:5], PROMPTS[2]], ROWS[:3], [0, 0, 0], SLOTS[:3]),
        ForwardBatch([[11], PROMPTS[1][5:], [13], new_prompt], ROWS,
                     [len(PROMPTS[0]), 5, len(PROMPTS[2]), 0], SLOTS),
        ForwardBatch([[21], [22], [23], [24]], ROWS,
                     [len(PROMPTS[0]) + 1, len(PROMPTS[1]), len(PROMPTS[2]) + 1,
                      len(new_prompt)], SLOTS),
    ]
    kinds = {(kind, lora) for kind in (ONE_ROW_DECODING, ROWS_DECODING, DECODING_BESIDE_PREFILL)
             for lora in (False, True)}
    assert set(runner.step.graphs) == (kinds if compiled else set())  # called without dynamo
    graphs = counters["stats"]["unique_graphs"]
    dynamo, through_dynamo = runner.step.compiled, []

    def counted(*args: object) -> torch.Tensor:
        through_dynamo.append(args)
        assert dynamo is not None
        return dynamo(*args)
    if compiled:  # dynamo's entry point, which checks guards: never called once traced
        runner.step.compiled = counted
    try:
        for batch in steps:
            got = runner.forward(batch)
            expected = _reference_last(reference, batch)
            assert got.shape == expected.shape == (len(batch.tokens), 128)
            torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
    finally:
        runner.step.compiled = dynamo
    assert counters["stats"]["unique_graphs"] == graphs  # compile() traced every kind
    assert not through_dynamo


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_chunk_cut_over_two_segments_matches_the_ragged_forward(
        runners: tuple[ModelRunner, ...], compiled: bool) -> None:
    """On the CPU a prompt of 11 tokens alone is two segments of 6 query positions (the exact
    layout), each attending over the same cache row: a decoding row beside it and the prompt's
    last token get the ragged forward's logits, with no new graph when compiled."""
    runner, reference = runners[1 if compiled else 0], runners[2]
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    steps = [ForwardBatch([PROMPTS[0]], [ROWS[0]], [0], [SLOTS[0]]),
             ForwardBatch([[17], prompt], [ROWS[0], ROWS[2]], [len(PROMPTS[0]), 0],
                          [SLOTS[0], SLOTS[2]])]
    layout = StepLayout.of(steps[1].tokens)
    shape = StepShape.of(steps[1].tokens, steps[1].rows, steps[1].start, layout, runner.cache,
                         exact=True)
    assert (shape.segments, shape.width, shape.packed) == (2, 6, 11)
    graphs = counters["stats"]["unique_graphs"]
    for batch in steps:
        got = runner.forward(batch)
        torch.testing.assert_close(got, _reference_last(reference, batch), atol=TOL, rtol=TOL)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_kind_traced_into_more_than_one_graph_stays_with_dynamo(
        caplog: pytest.LogCaptureFixture) -> None:
    """Only a kind that traced into exactly one graph is called directly: with none or two,
    the step cannot tell which one a call needs, so dynamo's guards choose."""
    step = SimpleNamespace(device=torch.device("cpu"), graphs={})
    code = _model.__code__
    for made in ([], [code, code]):
        EngineStep._keep_graph(step, (ROWS_DECODING, False), made)  # type: ignore[arg-type]
    assert step.graphs == {}
    assert caplog.text.count("runs through dynamo's guards") == 2
    EngineStep._keep_graph(step, (ROWS_DECODING, False), [code])  # type: ignore[arg-type]
    assert list(step.graphs) == [(ROWS_DECODING, False)]


def test_base_rows_are_unchanged_by_the_slot_bank(runners: tuple[ModelRunner, ...]) -> None:
    """Rows on slot 0 beside adapter rows get the base's logits: the compiled step's LoRA term
    (gathered for every row) adds nothing for them."""
    eager, compiled, _ = runners
    for runner in (eager, compiled):
        _prefill(runner)
    positions = [len(p) for p in PROMPTS]
    mixed = compiled.forward(ForwardBatch([[3]] * 4, ROWS, positions, SLOTS))
    base = eager.forward(ForwardBatch([[3]] * 4, ROWS, positions, None))
    torch.testing.assert_close(mixed[1], base[1], atol=TOL, rtol=TOL)
    assert not torch.allclose(mixed[0], base[0], atol=1e-2)  # slot 1 does change row 0


def test_the_step_reads_nothing_back_from_the_device(runners: tuple[ModelRunner, ...]) -> None:
    eager = runners[0]
    _prefill(eager)
    decode = ForwardBatch([[1], [2], [3]], ROWS[:3], [len(p) for p in PROMPTS[:3]], SLOTS[:3])
    mixed = ForwardBatch([[1], [2], [4, 5, 6]], ROWS[:3], [len(p) for p in PROMPTS[:3]],
                         SLOTS[:3])
    for batch in (decode, mixed):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            eager.forward(batch)
        names = {event.key for event in prof.key_averages()}
        assert "aten::scaled_dot_product_attention" in names  # the profile did see the step
        assert not names & HOST_SYNCS


def test_the_same_check_catches_a_read_back() -> None:
    """The check above can fail: what the runner did before (`int(lengths.max())`) is caught."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        int(torch.tensor([3, 4]).max())
    assert {event.key for event in prof.key_averages()} & HOST_SYNCS


def test_shapes_are_bucketed() -> None:
    assert [bucket(n, 16) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert bucket(20, 16) == 16 and bucket(20) == 32
    cache = type("Cache", (), {"rows": MAX_ROWS + 1, "max_len": MAX_LEN})()
    tokens = [[1], [2]]
    shape = StepShape.of(tokens, [0, 3], [10, 17], StepLayout.of(tokens), cache)  # type: ignore[arg-type]
    assert shape == StepShape(entries=2, packed=0, segments=0, width=0, grid=8, context=32,
                              outputs=2)
    # the grid always has a row past every entry's, for the padding; no size is 1 but the
    # entries and outputs of one row decoding alone
    tokens = [[1]]
    one = StepShape.of(tokens, [7], [0], StepLayout.of(tokens), cache)  # type: ignore[arg-type]
    assert (one.grid, one.entries, one.context, one.outputs) == (9, 1, 2, 1)  # one stream
    tokens = [[1, 2]]  # a prefill chunk alone: a padding one-token entry, two outputs
    alone = StepShape.of(tokens, [7], [0], StepLayout.of(tokens), cache)  # type: ignore[arg-type]
    assert (alone.grid, alone.entries, alone.outputs, alone.packed) == (2, 2, 2, 2)
    # two prefill chunks of 5 and 3 tokens beside one decoding row: 8 packed tokens, a third
    # segment for the padding, 8 query positions per segment
    tokens = [[1, 2, 3, 4, 5], [9], [6, 7, 8]]
    layout = StepLayout.of(tokens)
    assert (layout.singles, layout.packed) == ([1], [0, 2])
    mixed = StepShape.of(tokens, [2, 5, 0], [0, 20, 4], layout, cache)  # type: ignore[arg-type]
    assert mixed == StepShape(entries=2, packed=8, segments=4, width=8, grid=8, context=32,
                              outputs=4)
    assert mixed.tokens == 10


def test_exact_shapes_cut_chunks_into_segments_of_one_width() -> None:
    """The CPU's layout: each size what the step holds (2 or more), no padding token, and the
    chunks cut into segments of one width, the fewest cells with each segment weighed as
    `SEGMENT_CELLS` more."""
    cache = type("Cache", (), {"rows": MAX_ROWS + 1, "max_len": MAX_LEN})()
    tokens = [[1, 2, 3, 4, 5], [9], [6, 7, 8]]
    layout = StepLayout.of(tokens)
    mixed = StepShape.of(tokens, [2, 5, 0], [0, 20, 4], layout, cache, exact=True)  # type: ignore[arg-type]
    assert mixed == StepShape(entries=2, packed=8, segments=2, width=5, grid=7, context=21,
                              outputs=3)
    assert packed_width([35]) == 18 and segment_count([35], 18) == 2  # not one of 64
    assert packed_width([35] * 8) == 35 and segment_count([35] * 8, 35) == 8
    assert packed_width([2]) == 2 and segment_count([2], 2) == 2  # a padding segment
    for lengths in ([35, 20], [100, 3, 3], [7, 7, 7, 40], [2, 2]):
        width = packed_width(lengths)
        cost = segment_count(lengths, width) * (width + SEGMENT_CELLS)
        assert all(cost <= segment_count(lengths, w) * (w + SEGMENT_CELLS)
                   for w in range(2, max(lengths) + 1))


def _embedded_shapes(runner: ModelRunner, batch: ForwardBatch) -> list[list[int]]:
    """The shapes of the token ids the step's forward embeds."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        runner.forward(batch)
    return [event.input_shapes[1] for event in prof.events() if event.name == "aten::embedding"]


def test_the_cpu_runner_steps_over_exact_shapes() -> None:
    """A CPU runner's step embeds the tokens it holds, with no padding: three decoding rows and
    a chunk of 35 are 38 tokens, not 4 + 64 as the buckets would make them."""
    runner = _runner(_model(), compile=False)
    chunk = list(range(1, 36))
    batch = ForwardBatch([chunk, [2], [3], [4]], [0, 1, 2, 3], [0, 5, 5, 5], [1, 0, 2, 3])
    assert _embedded_shapes(runner, batch) == [[38, 1]]
    tokens = batch.tokens
    bucketed = StepShape.of(tokens, batch.rows, batch.start, StepLayout.of(tokens), runner.cache)
    assert bucketed.tokens == 4 + 64  # what the same step would embed on CUDA


def test_compiling_is_on_by_default_only_where_it_was_measured() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert should_compile("auto", cpu, "int4") and should_compile("auto", cpu, "none")
    assert not should_compile("auto", cpu, "nf4") and not should_compile("auto", cuda, "nf4")
    assert should_compile("on", cuda, "nf4") and not should_compile("off", cpu, "int4")


def test_the_kv_cache_grows_under_the_compiled_step_without_a_recompile() -> None:
    """A cache of 8 positions per row grows to 16, 32 and 48 while rows decode: the compiled
    step keeps the eager step's logits and compiles no new graph (the cache's length is a
    dynamic dimension)."""
    model = _model()
    eager, compiled = _runner(model, False, kv_capacity=8), _runner(model, True, kv_capacity=8)
    assert compiled.cache.capacity == 8
    rows, slots, prompts = ROWS[:2], SLOTS[:2], [[5, 9, 2], [7] * 6]
    for runner in (eager, compiled):
        runner.forward(ForwardBatch(prompts, rows, [0, 0], slots))
    graphs = counters["stats"]["unique_graphs"]
    positions, tokens = [3, 6], [11, 12]
    while positions[1] < MAX_LEN - 1:
        batch = ForwardBatch([[t] for t in tokens], rows, positions, slots)
        got, expected = compiled.forward(batch), eager.forward(batch)
        torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
        tokens = expected.argmax(-1).tolist()
        positions = [p + 1 for p in positions]
    assert compiled.cache.capacity == eager.cache.capacity == MAX_LEN
    assert counters["stats"]["unique_graphs"] == graphs
    compiled.trim()
    assert compiled.cache.capacity == 8


def _int8_runner(model: torch.nn.Module, compile: bool) -> ModelRunner:
    from server.lora.adapter import AdapterWeights

    bank = LoraSlots(module_shapes(model), 3, 16, torch.int8, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    for slot, rank in enumerate((16, 8, 4), start=1):
        modules = {key: (torch.randn(rank, a.shape[2], generator=generator) * 0.2,
                         torch.randn(bank.b[key].shape[1], rank, generator=generator) * 0.2, 1.0)
                   for key, a in bank.a.items()}
        bank.write(slot, AdapterWeights(rank=rank, alpha=float(rank), use_rslora=False,
                                        target_modules=frozenset(k.split(".")[1] for k in modules),
                                        base_model=None, modules=modules))
    return ModelRunner(model, bank, MAX_ROWS, MAX_LEN, torch.float32, torch.device("cpu"),
                       compile=compile)


def test_a_compiled_step_over_an_int8_bank_gives_its_eager_steps_logits() -> None:
    """The compiled int4 step's default bank: int8 codes, sealed into one storage and rebuilt
    inside the trace; prefill and decode compiled give what the eager step computes from the
    same codes (float32 on both sides)."""
    model = _model()
    eager, compiled = _int8_runner(model, False), _int8_runner(model, True)
    assert compiled.step.compiled is not None
    tensors = [t for linear in compiled.linears.values() for t in (linear.a, linear.b, linear.scales)]
    assert len({t.untyped_storage().data_ptr() for t in tensors if t is not None}) == 2
    torch.testing.assert_close(_prefill(compiled), _prefill(eager), atol=TOL, rtol=TOL)
    positions = [len(p) for p in PROMPTS]
    for step in range(3):
        batch = ForwardBatch([[3 + step]] * 4, ROWS, [p + step for p in positions], SLOTS)
        torch.testing.assert_close(compiled.forward(batch), eager.forward(batch),
                                   atol=TOL, rtol=TOL)
