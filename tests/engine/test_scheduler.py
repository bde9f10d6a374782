"""The scheduler alone (plain Python): FIFO admission into the lowest free rows, waiting for a
slot, fairness with more personas than slots, chunked prefill within its budget, retiring a
replaced version."""

from __future__ import annotations

from server.engine.scheduler import Scheduler, Sequence
from server.lora.manager import SlotManager
from tests.engine.fakes import FakeBank, ref, request, weights


def scheduler(rows: int = 4, slots: int = 2, chunk: int = 16) -> tuple[Scheduler, FakeBank]:
    bank = FakeBank(slots)
    return Scheduler(rows, chunk, SlotManager(bank)), bank  # type: ignore[arg-type]


def seq(rid: str, persona: str | None = None, prompt_len: int = 3) -> Sequence:
    adapter = ref(persona) if persona else None
    return Sequence(request(rid, tuple(range(prompt_len)), adapter=adapter),
                    weights() if persona else None)


def test_admits_in_arrival_order_into_free_rows() -> None:
    sched, _ = scheduler(rows=2)
    for rid in "abc":
        sched.add(seq(rid))
    admitted, failed = sched.admit()
    assert [s.request_id for s in admitted] == ["a", "b"] and not failed
    assert sorted(s.row for s in admitted) == [0, 1]
    assert [s.request_id for s in sched.waiting] == ["c"]
    sched.finish(admitted[0])
    (third,), _ = sched.admit()
    assert third.request_id == "c" and third.row == admitted[0].row  # the freed row


def test_a_request_takes_the_lowest_free_row() -> None:
    """Rows freed in any order are handed out lowest first (the step's attention reads the KV
    cache's first max(row) + 2 rows), and so are rows taken for scoring."""
    sched, _ = scheduler(rows=8)
    for rid in "abcdef":
        sched.add(seq(rid))
    running, _ = sched.admit()
    assert [s.row for s in running] == [0, 1, 2, 3, 4, 5]
    for index in (4, 1, 5):
        sched.finish(running[index])
    sched.add(seq("g"))
    (alone,), _ = sched.admit()
    assert alone.row == 1
    taken = sched.take_rows(3)
    assert taken == [4, 5, 6]
    sched.return_rows(taken)
    for s in (*running[:1], *running[2:4], alone):
        sched.finish(s)
    sched.add(seq("h"))
    (last,), _ = sched.admit()
    assert last.row == 0 and sched.free_rows == 7


def test_the_head_waits_for_a_slot_and_nobody_jumps_ahead() -> None:
    sched, bank = scheduler(rows=4, slots=1)
    first, second, base = seq("p1", "pirate"), seq("b1", "bard"), seq("x", None)
    for s in (first, second, base):
        sched.add(s)
    admitted, _ = sched.admit()
    # the bard needs the only slot, held by the running pirate: it waits, and the base request
    # queued behind it waits too (FIFO), although it needs no slot
    assert [s.request_id for s in admitted] == ["p1"]
    assert [s.request_id for s in sched.waiting] == ["b1", "x"]
    sched.finish(first)
    admitted, _ = sched.admit()
    assert [s.request_id for s in admitted] == ["b1", "x"]
    assert admitted[0].slot == 1 and admitted[1].slot == 0
    assert bank.writes == [1, 1]  # the pirate was evicted for the bard


def test_more_personas_than_slots_each_served_in_turn() -> None:
    sched, _ = scheduler(rows=2, slots=2)
    order = [f"{p}{i}" for i in range(3) for p in ("a", "b", "c", "d")]
    for rid in order:
        sched.add(seq(rid, rid[0]))
    served: list[str] = []
    while not sched.idle:
        admitted, _ = sched.admit()
        served += [s.request_id for s in admitted]
        for s in list(sched.running.values()):  # every running request ends this round
            sched.finish(s)
    assert served == order  # strictly first come, first served: no persona starves


def test_prefill_chunks_share_the_token_budget_and_decoders_get_one_token() -> None:
    sched, _ = scheduler(rows=3, chunk=10)
    long, short, decoding = seq("long", prompt_len=8), seq("short", prompt_len=6), seq("d")
    for s in (decoding, long, short):
        sched.add(s)
    sched.admit()
    decoding.cached = len(decoding.tokens)
    decoding.tokens.append(7)  # one new token to decode
    plan = sched.plan()
    assert [(c.seq.request_id, len(c.tokens), c.start) for c in plan.prefill] == [
        ("long", 8, 0), ("short", 2, 0)]
    assert [(c.seq.request_id, c.tokens) for c in plan.decode] == [("d", [7])]


def test_a_retired_version_leaves_its_slot_once_idle() -> None:
    sched, _ = scheduler(slots=2)
    old = seq("old", "pirate")
    sched.add(old)
    sched.admit()
    sched.retire(old.key or "")
    assert sched.slots.users("pirate@1") == 1  # still used by the running row
    sched.finish(old)
    assert "pirate@1" not in sched.slots.resident()  # type: ignore[attr-defined]


def test_an_adapter_that_fails_to_load_fails_alone() -> None:
    sched, _ = scheduler()
    broken = seq("broken", "pirate")
    broken.weights = None  # nothing sent: the load raises
    fine = seq("fine")
    sched.add(broken)
    sched.add(fine)
    admitted, failed = sched.admit()
    assert [f.seq.request_id for f in failed] == ["broken"]
    assert [s.request_id for s in admitted] == ["fine"]
    assert sched.slots.resident() == {}  # type: ignore[attr-defined]


def test_finish_of_a_waiting_sequence_removes_it() -> None:
    sched, _ = scheduler(rows=1)
    first, second = seq("a"), seq("b")
    sched.add(first)
    sched.add(second)
    sched.admit()
    sched.finish(second)
    assert not sched.waiting and sched.find("b") is None and sched.find("a") is first
