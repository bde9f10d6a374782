"""vLLM's `/tokenize` and `/detokenize`, `GET /v1/models/{id}`, `HEAD /v1/models`, and the
404/405 answers of unknown routes and wrong methods (with the web page still at `/`), over a
live server; then the same routes behind API keys."""

from __future__ import annotations

import httpx
import openai

from server.composition import Cameo
from tests.api.support import BASE_ID, ok, post
from tests.robustness.conftest import ServerFactory

CHAT = [{"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"}]


def test_tokenize_a_prompt_and_back(base_url: str, cameo: Cameo) -> None:
    text = "Bonjour, café 😀"
    body = ok(post(base_url, "/tokenize", {"model": BASE_ID, "prompt": text}))
    ids = list(cameo.base.tokenizer(text)["input_ids"])
    assert body == {"count": len(ids), "max_model_len": cameo.max_context, "tokens": ids,
                    "token_strs": None}
    strs = ok(post(base_url, "/tokenize", {"prompt": text, "return_token_strs": True}))
    assert strs["token_strs"] == cameo.base.tokenizer.convert_ids_to_tokens(ids)
    back = ok(post(base_url, "/detokenize", {"model": BASE_ID, "tokens": ids}))
    assert back == {"prompt": text}


def test_tokenize_messages_counts_what_chat_sends(base_url: str) -> None:
    for model in (BASE_ID, "alpha"):
        counted = ok(post(base_url, "/tokenize", {"model": model, "messages": CHAT}))
        reply = ok(post(base_url, "/v1/chat/completions", {"model": model, "messages": CHAT,
                                                            "max_tokens": 1}))
        assert counted["count"] == reply["usage"]["prompt_tokens"] == len(counted["tokens"])


def test_tokenize_refusals(base_url: str) -> None:
    cases = [("/tokenize", {"model": "nobody", "prompt": "x"}, 404, "model"),
             ("/tokenize", {"model": BASE_ID}, 400, "prompt"),
             ("/tokenize", {"prompt": "x", "messages": CHAT}, 400, "prompt"),
             ("/detokenize", {"tokens": [10**9]}, 400, "tokens"),
             ("/detokenize", {"tokens": "abc"}, 400, "tokens")]
    for path, body, status, param in cases:
        response = post(base_url, path, body)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["error"]["param"] == param


def test_retrieve_models(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    base = client.models.retrieve(BASE_ID)  # the id holds a "/"
    assert base.id == BASE_ID and base.object == "model"
    persona = ok(httpx.get(f"{base_url}/v1/models/alpha"))
    listed = {m["id"]: m for m in ok(httpx.get(f"{base_url}/v1/models"))["data"]}
    assert persona == listed["alpha"] and persona["parent"] == BASE_ID
    missing = httpx.get(f"{base_url}/v1/models/nobody")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    head = httpx.head(f"{base_url}/v1/models")
    assert head.status_code == 200 and head.content == b""


def test_unknown_routes_404_and_wrong_methods_405(base_url: str) -> None:
    for method, path in [("POST", "/v1/nothing"), ("GET", "/v1/nothing"), ("PUT", "/nowhere"),
                         ("DELETE", "/v1/chat"), ("POST", "/v1/responses")]:
        response = httpx.request(method, f"{base_url}{path}", json={})
        assert response.status_code == 404, (method, path, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    hint = httpx.post(f"{base_url}/v1/responses", json={}).json()["error"]["message"]
    assert "/v1/chat/completions" in hint
    for method, path, allowed in [("GET", "/v1/chat/completions", "POST"),
                                  ("PUT", "/v1/completions", "POST"),
                                  ("GET", "/tokenize", "POST"),
                                  ("POST", "/v1/models", "GET"),
                                  ("POST", "/", "GET"), ("DELETE", "/app.js", "GET")]:
        response = httpx.request(method, f"{base_url}{path}")
        assert response.status_code == 405, (method, path, response.text)
        assert allowed in response.headers["allow"]
        assert response.json()["error"]["type"] == "invalid_request_error"
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{base_url}/app.js").status_code == 200


def test_new_routes_need_the_user_key(serve: ServerFactory) -> None:
    with serve(api_keys="k1") as (_runtime, url):
        key = {"Authorization": "Bearer k1"}
        calls = [("POST", "/tokenize", {"prompt": "x"}),
                 ("POST", "/detokenize", {"tokens": [1]}),
                 ("POST", "/v1/completions", {"model": BASE_ID, "prompt": "x", "max_tokens": 1}),
                 ("GET", f"/v1/models/{BASE_ID}", None)]
        for method, path, body in calls:
            assert httpx.request(method, f"{url}{path}", json=body).status_code == 401, path
            answer = httpx.request(method, f"{url}{path}", json=body, headers=key, timeout=60)
            assert answer.status_code == 200, (path, answer.text)
        assert httpx.head(f"{url}/v1/models").status_code == 401
