"""Constrained decoding, logit bias and logprobs in the mixed batch, on the embedded model.

Each constrained row follows its own grammar while sharing the batch with unconstrained rows,
which stay what they would be alone (teacher-forced greedy check). Logprobs are the model's own
distribution: they match a teacher-forced forward of the same sequence.
"""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
import torch

from server.composition import Cameo
from server.engine.constraints import GrammarError, GrammarSpec
from server.engine.types import GenerationRequest, SamplingParams
from tests.conftest import CameoFactory
from tests.helpers import assert_greedy_consistent, chat_prompt, run_requests
from tests.numerics import logits_tolerance
from tests.scoring import EngineProbe

PET = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "legs": {"type": "integer", "minimum": 0, "maximum": 100},
    "kind": {"enum": ["cat", "dog", "parrot"]}},
    "required": ["name", "legs", "kind"], "additionalProperties": False}
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "big": {"type": "boolean"}},
        "required": ["city", "big"], "additionalProperties": False}


def _request(cameo: Cameo, rid: str, text: str, adapter: str | None = None,
             **sampling: object) -> GenerationRequest:
    ref = None
    if adapter is not None:
        persona = cameo.registry.get(adapter)
        assert persona is not None
        ref = persona.adapter
    params = SamplingParams(**{"max_tokens": 48, "temperature": 0.0, **sampling})  # type: ignore[arg-type]
    return GenerationRequest(rid, chat_prompt(cameo.base.tokenizer, text), params, ref)


def test_each_row_follows_its_own_grammar_in_one_batch(cameo: Cameo) -> None:
    pet = GrammarSpec("json_schema", json.dumps(PET))
    city = GrammarSpec("json_schema", json.dumps(CITY))
    requests = [
        _request(cameo, "pet", "Describe a pet as JSON.", "alpha", grammar=pet),
        _request(cameo, "city", "Name a city as JSON.", "bravo", grammar=city),
        _request(cameo, "any", "Give me JSON about the sea.", grammar=GrammarSpec("json_object")),
        _request(cameo, "yesno", "Is water wet?", grammar=GrammarSpec("regex", "(yes|no)")),
        _request(cameo, "free", "Tell me about rivers.", "charlie", max_tokens=12),
    ]
    pet_out, city_out, any_out, yesno_out, free_out = run_requests(EngineProbe.of(cameo), requests)
    for result, schema in ((pet_out, PET), (city_out, CITY)):
        assert result.finish_reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), schema)
    # free JSON: this small model may nest until max_tokens; whatever it wrote is JSON so far
    assert any_out.text.lstrip().startswith("{")
    if any_out.finish_reason == "stop":
        assert isinstance(json.loads(any_out.text), dict)
    assert yesno_out.text in ("yes", "no") and yesno_out.finish_reason == "stop"
    # the unconstrained row is what charlie computes alone
    assert_greedy_consistent(EngineProbe.of(cameo), requests[-1].prompt_ids, free_out.token_ids,
                             requests[-1].adapter)


def test_a_grammar_cut_short_by_max_tokens_ends_with_length(cameo: Cameo) -> None:
    request = _request(cameo, "short", "Describe a pet as JSON.", max_tokens=3,
                       grammar=GrammarSpec("json_schema", json.dumps(PET)))
    (result,) = run_requests(EngineProbe.of(cameo), [request])
    assert result.finish_reason == "length" and result.text.startswith("{")


def test_an_uncompilable_grammar_is_refused(cameo: Cameo) -> None:
    with pytest.raises(GrammarError, match="nonsense"):
        cameo.base.grammars.compile(GrammarSpec("json_schema", '{"type": "nonsense"}'))
    bad = _request(cameo, "bad", "Hi", grammar=GrammarSpec("regex", "(("))
    good = _request(cameo, "good", "Hi", max_tokens=4)
    bad_out, good_out = run_requests(EngineProbe.of(cameo), [bad, good])
    assert bad_out.outputs[-1].error_code == "invalid_grammar"
    assert good_out.finish_reason in ("stop", "length")


def test_logit_bias_bans_and_forces_tokens(cameo: Cameo) -> None:
    plain = _request(cameo, "plain", "Name three colours.", max_tokens=4)
    (baseline,) = run_requests(EngineProbe.of(cameo), [plain])
    first = baseline.token_ids[0]
    banned = _request(cameo, "banned", "Name three colours.", max_tokens=4,
                      logit_bias=((first, -100.0),))
    forced_token = cameo.base.tokenizer.encode(" zebra", add_special_tokens=False)[0]
    forced = _request(cameo, "forced", "Name three colours.", max_tokens=3,
                      logit_bias=((forced_token, 100.0),), ignore_eos=True)
    banned_out, forced_out = run_requests(EngineProbe.of(cameo), [banned, forced])
    assert banned_out.token_ids[0] != first
    assert forced_out.token_ids == [forced_token] * 3


def test_logprobs_are_the_models_own(cameo: Cameo) -> None:
    request = _request(cameo, "lp", "Tell me about rivers.", "alpha", max_tokens=8,
                       logprobs=5)
    (result,) = run_requests(EngineProbe.of(cameo), [request])
    logprobs = [lp for output in result.outputs for lp in output.logprobs]
    assert [lp.token_id for lp in logprobs] == result.token_ids
    (logits,) = EngineProbe.of(cameo).score([(list(request.prompt_ids) + result.token_ids[:-1],
                                       request.adapter)])
    expected = torch.log_softmax(logits[len(request.prompt_ids) - 1:].float(), dim=-1)
    tolerance = logits_tolerance(EngineProbe.of(cameo).model, logits) * 2  # a logprob is a logit less
    for position, lp in enumerate(logprobs):                         # a logsumexp: twice the error
        assert lp.logprob <= 0.0 and len(lp.top) == 5
        assert abs(lp.logprob - float(expected[position, lp.token_id])) <= tolerance
        values = [value for _, value in lp.top]
        assert values == sorted(values, reverse=True)
        assert lp.top[0][1] >= lp.logprob - tolerance  # greedy: the chosen one is the best


def test_prompt_logprobs_with_no_generated_token(cameo: Cameo) -> None:
    request = _request(cameo, "echo", "The capital of France is", max_tokens=0,
                       prompt_logprobs=1)
    (result,) = run_requests(EngineProbe.of(cameo), [request])
    (output,) = result.outputs
    assert output.finish_reason == "length" and output.completion_tokens == 0
    scored = output.prompt_logprobs
    assert scored is not None and scored[0] is None
    assert len(scored) == len(request.prompt_ids)
    assert [lp.token_id for lp in scored[1:] if lp] == list(request.prompt_ids[1:])
    assert all(lp is not None and lp.logprob <= 0.0 and len(lp.top) == 1 for lp in scored[1:])
    total = sum(lp.logprob for lp in scored[1:] if lp)
    assert math.isfinite(total)
    assert EngineProbe.of(cameo).stats.running == 0  # no row was kept


def test_prompt_logprobs_when_the_batch_is_full(make_cameo: CameoFactory) -> None:
    """The prompt is scored in the request's own batch row, so a full batch is no problem."""
    cameo = make_cameo(max_batch_size=2)
    busy = _request(cameo, "busy", "Tell me about rivers.", max_tokens=12, ignore_eos=True)
    echo = _request(cameo, "echo", "The capital of France is", max_tokens=2,
                    prompt_logprobs=0)
    busy_out, echo_out = run_requests(EngineProbe.of(cameo), [busy, echo])
    assert busy_out.finish_reason == "length" and len(busy_out.token_ids) == 12
    scored = echo_out.outputs[0].prompt_logprobs
    assert scored is not None and len(scored) == len(echo.prompt_ids)
    assert echo_out.finish_reason in ("stop", "length") and echo_out.token_ids
