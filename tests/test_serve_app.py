"""The server's HTTP layer in this process (Starlette's TestClient on the built app, no lifespan, no
worker): the body guard, the API key, request validation, the OpenAPI document, /info, /ui and /docs.

What needs a real process -- answers from the model, SIGTERM and Ctrl+C, a connection closed on the
client, the worker processes, the browser -- is tested against live servers in test_serve.py,
test_explain.py, test_api_contract.py and test_ui_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from emotions_pl.schema import LABELS
from emotions_pl.serve.contract import NOT_BLANK
from emotions_pl.serve.http import GuardMiddleware
from emotions_pl.serve.settings import (
    BODY_DEADLINE_S,
    DISCARD_BYTES,
    EXPLAIN_QUEUE,
    MAX_BODY_BYTES,
    MAX_EXPLAIN_TEXTS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
)
from helpers.serve_app import app_client, fake_export

KEY = "s3cret"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_export(tmp_path_factory.mktemp("app") / "emotions-fake")


@pytest.fixture(scope="module")
def client(export: Path):
    return app_client(export, "--batch-timeout", "0.02")


@pytest.fixture(scope="module")
def keyed(export: Path):
    return app_client(export, "--variant", "onnx", api_key=KEY)


BAD_INPUT = {
    "invalid JSON": ({"content": b'{"text": "i feel', "headers": JSON}, 400, "invalid JSON"),
    "no field": ({"json": {}}, 422, "exactly one of 'text'"),
    "both fields": ({"json": {"text": "a", "texts": ["b"]}}, 422, "exactly one of 'text'"),
    "null text": ({"json": {"text": None}}, 422, "exactly one of 'text'"),
    "unknown field": ({"json": {"txt": "hello"}}, 422, "Extra inputs are not permitted"),
    "text not a string": ({"json": {"text": 5}}, 422, "valid string"),
    "texts not a list": ({"json": {"texts": "hello"}}, 422, "valid list"),
    "item not a string": ({"json": {"texts": ["fine", 3]}}, 422, "valid string"),
    "body not an object": ({"json": ["hello"]}, 422, "valid dictionary"),
    "empty text": ({"json": {"text": ""}}, 422, "empty or only whitespace"),
    "whitespace text": ({"json": {"text": " \n\t "}}, 422, "empty or only whitespace"),
    "unicode white space": ({"json": {"text": "\u3000\ufeff\u00a0\u2028"}}, 422, "empty or only whitespace"),
    "whitespace item": ({"json": {"texts": ["fine", "   "]}}, 422, "empty or only whitespace"),
    "empty list": ({"json": {"texts": []}}, 422, "at least 1"),
    "text too long": ({"json": {"text": "a" * (MAX_TEXT_CHARS + 1)}}, 422, f"the limit is {MAX_TEXT_CHARS}"),
    "too many texts": ({"json": {"texts": ["hi"] * (MAX_TEXTS + 1)}}, 422, f"at most {MAX_TEXTS}"),
    "null beside text": ({"json": {"text": "a", "texts": None}}, 422, "exactly one of 'text'"),
    "body too large": ({"json": {"texts": ["a" * 1500] * 1500}}, 413, f"limit is {MAX_BODY_BYTES}"),
    "no content type": ({"content": b'{"text": "i feel fine"}'}, 415, "none was sent"),
    "text/plain": (
        {"content": b'{"text": "hi"}', "headers": {"Content-Type": "text/plain"}},
        415,
        "got 'text/plain'",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_a_client_error(client, case: str) -> None:
    """Refused in the HTTP process, before anything is queued for a worker (there is none here)."""
    kwargs, status, message = BAD_INPUT[case]
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in json.dumps(response.json()["detail"])
    assert "a" * 1000 not in response.text  # the input is not echoed back
    assert response.headers["server-timing"].startswith("app;dur=")


def _requests_total(path: str, status: str) -> float:
    labels = {"path": path, "status": status}
    return REGISTRY.get_sample_value("emotions_http_requests_total", labels) or 0.0


def test_every_answer_is_counted_by_path_and_status(client) -> None:
    before = _requests_total("/predict", "422"), _requests_total("other", "404")
    assert client.post("/predict", json={"text": ""}).status_code == 422
    assert client.get("/nowhere").status_code == 404
    assert (_requests_total("/predict", "422"), _requests_total("other", "404")) == (
        before[0] + 1,
        before[1] + 1,
    )


EXPLAIN_LABELS = ["calm", "upset"]


@pytest.fixture(scope="module")
def other_labels(tmp_path_factory: pytest.TempPathFactory):
    """An export with labels of its own: /explain's `label` must be one of them, not of schema.LABELS."""
    return app_client(fake_export(tmp_path_factory.mktemp("labels") / "two-labels", EXPLAIN_LABELS))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "hi", "label": "joy"}, "label must be one of calm, upset (got 'joy')"),
        ({"text": "hi", "label": None}, "label must be one of calm, upset (got None)"),
        ({"text": "hi", "label": 1}, "valid string"),
        ({"texts": ["hi"] * (MAX_EXPLAIN_TEXTS + 1)}, f"at most {MAX_EXPLAIN_TEXTS} items"),
        ({"text": "hi", "texts": ["hi"], "label": "joy"}, "exactly one of"),
        ({"text": " ", "label": "calm"}, "empty or only whitespace"),
        ({"text": "hi", "steps": 500}, "Extra inputs"),
    ],
)
def test_explain_requests_are_checked_against_the_exports_labels(
    other_labels, body: dict, message: str
) -> None:
    answer = other_labels.post("/explain", json=body)
    assert answer.status_code == 422, answer.text
    assert message in json.dumps(answer.json()["detail"])


def test_the_exports_labels_are_the_documented_ones(other_labels) -> None:
    schemas = other_labels.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["OneTextToExplain"]["properties"]["label"]["enum"] == EXPLAIN_LABELS
    assert other_labels.get("/info").json()["model"]["labels"] == EXPLAIN_LABELS


def test_a_60_mb_body_gets_a_readable_413_and_the_connection_closed(client) -> None:
    """Within the 64 MiB the guard reads and discards, then answers 413 JSON with Connection: close."""
    body = b'{"text": "' + b"a" * 60_000_000 + b'"}'
    answer = client.post("/predict", content=body, headers=JSON)
    assert answer.status_code == 413
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"] == "application/json"
    assert f"body has {len(body)} bytes; the limit is {MAX_BODY_BYTES}" in answer.json()["detail"]


def test_a_body_declared_over_64_mb_is_refused_without_reading_it(client) -> None:
    answer = client.post("/predict", content=b"{}", headers={**JSON, "Content-Length": "200000012"})
    assert answer.status_code == 413 and answer.headers["connection"] == "close"
    assert "body has 200000012 bytes" in answer.json()["detail"]


# -- the guard on its own, fed chunk by chunk (as a socket would) ------------------------------------------


def _run_guard(
    chunks: list[bytes], declared: int | None = None, complete: bool = True, **guard: float
) -> tuple[dict, int, bool]:
    """The guard in front of an app that must not be reached, fed ``chunks`` (then nothing more, unless
    ``complete``); its answer, the chunks it read, and whether the app was called."""
    reached = []

    async def app(scope: dict, receive, send) -> None:
        reached.append(scope)

    read = 0

    async def receive() -> dict:
        nonlocal read
        if read == len(chunks):
            await asyncio.sleep(3600)  # a client that stops sending
        read += 1
        return {
            "type": "http.request",
            "body": chunks[read - 1],
            "more_body": read < len(chunks) or not complete,
        }

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "path": "/predict", "method": "POST", "headers": headers}
    asyncio.run(GuardMiddleware(app, **guard)(scope, receive, send))
    start, body = sent
    answer = {
        "status": start["status"],
        "headers": {k.decode(): v.decode() for k, v in start["headers"]},
        "detail": json.loads(body["body"])["detail"],
    }
    return answer, read, bool(reached)


def test_a_body_over_the_limit_is_read_to_the_end_up_to_64_mb() -> None:
    chunks = [b"a" * 1_000_000] * 60
    answer, read, reached = _run_guard(chunks)
    assert (answer["status"], read, reached) == (413, 60, False)  # all read, so the client sees the 413
    assert answer["headers"]["connection"] == "close"


def test_a_body_past_64_mb_is_cut_off_while_it_arrives() -> None:
    chunks = [b"a" * 1_000_000] * 200
    answer, read, reached = _run_guard(chunks)
    assert answer["status"] == 413 and not reached
    assert read == DISCARD_BYTES // 1_000_000 + 1  # the first chunk past the bound, no further
    assert answer["headers"]["connection"] == "close"


def test_a_slow_body_is_cut_off_at_the_deadline() -> None:
    answer, read, reached = _run_guard([b"{"], declared=1000, complete=False, deadline_s=0.2)
    assert (answer["status"], read, reached) == (408, 1, False)
    assert answer["detail"] == "the body did not arrive within 0.2 s"
    assert answer["headers"]["connection"] == "close"
    assert BODY_DEADLINE_S == 10  # the served deadline (test_serve.py checks it on a real connection)


def test_a_body_within_the_limit_reaches_the_app() -> None:
    answer_or_none = []

    async def app(scope: dict, receive, send) -> None:
        answer_or_none.append(await receive())

    async def receive() -> dict:
        return {"type": "http.request", "body": b'{"text": "hi"}', "more_body": False}

    async def send(message: dict) -> None:
        pass

    scope = {
        "type": "http",
        "path": "/predict",
        "method": "POST",
        "headers": [(b"content-type", b"application/json")],
    }
    asyncio.run(GuardMiddleware(app)(scope, receive, send))
    assert answer_or_none == [{"type": "http.request", "body": b'{"text": "hi"}', "more_body": False}]


# -- the API key ---------------------------------------------------------------------------------------------

KEYED_ROUTES = [
    ("POST", "/predict"),
    ("POST", "/explain"),
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/"),
]


@pytest.mark.parametrize(("method", "path"), KEYED_ROUTES)
@pytest.mark.parametrize(
    "sent",
    [{}, {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}],
    ids=["none", "wrong", "wrong bearer"],
)
def test_a_missing_or_wrong_key_is_401(keyed, method: str, path: str, sent: dict) -> None:
    answer = keyed.request(method, path, json={"text": "hi"} if method == "POST" else None, headers=sent)
    assert answer.status_code == 401, answer.text
    assert "send it in the X-API-Key header" in answer.json()["detail"]


def test_the_key_opens_the_routes_in_a_header_or_as_a_bearer_token(keyed) -> None:
    assert keyed.get("/info", headers={"X-API-Key": KEY}).json()["model"]["api_key_required"] is True
    scrape = keyed.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})  # Prometheus's way
    assert scrape.status_code == 200 and "emotions_http_requests_total" in scrape.text
    assert keyed.post("/predict", json={"text": ""}, headers={"X-API-Key": KEY}).status_code == 422


def test_health_and_the_page_need_no_key(keyed) -> None:
    health = keyed.get("/health")
    assert health.status_code == 503 and health.text == "not ready"  # no worker here; never a 401
    assert keyed.get("/ui").status_code == 200  # the page asks for the key itself


def _operations(spec: dict) -> dict[str, dict]:
    return {
        f"{method.upper()} {path}": op for path, ops in spec["paths"].items() for method, op in ops.items()
    }


def test_openapi_declares_the_key_where_it_is_needed(keyed) -> None:
    spec = keyed.get("/openapi.json").json()
    for name, op in _operations(spec).items():
        if name in {"GET /health", "GET /ui"}:
            assert "security" not in op and "401" not in op["responses"], name
        else:
            assert op["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}], name
            assert "401" in op["responses"], name
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert "needs the API key" in spec["info"]["description"]


# -- the document, /info, /ui and /docs ----------------------------------------------------------------------


def test_openapi_describes_request_and_response(client) -> None:
    """No key configured: nothing declares security; every route's statuses and real media types."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"label", "score", "scores"} <= schemas["Prediction"]["properties"].keys()
    ops = _operations(spec)
    assert set(ops) == {
        "POST /predict",
        "POST /explain",
        "GET /health",
        "GET /info",
        "GET /metrics",
        "GET /",
        "GET /ui",
    }
    assert "securitySchemes" not in spec.get("components", {})
    assert not any("security" in op for op in ops.values())
    predict = ops["POST /predict"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/PredictRequest")
    assert set(predict["responses"]) == {"200", "400", "408", "413", "415", "422", "500", "504"}
    for code, response in predict["responses"].items():
        want = "Prediction" if code == "200" else ("ValidationFailure" if code == "422" else "Error")
        assert want in json.dumps(response["content"]["application/json"]["schema"]), code
    media = {name: list(op["responses"]["200"]["content"]) for name, op in ops.items()}
    assert media["GET /metrics"] == media["GET /health"] == media["GET /"] == ["text/plain"]
    assert media["GET /ui"] == ["text/html"] and media["GET /info"] == ["application/json"]
    assert set(ops["GET /health"]["responses"]) == {"200", "503"}
    assert all("401" not in op["responses"] for op in ops.values())
    # The request rules, as the validators enforce them: one of two closed shapes, non-blank, the limits.
    assert schemas["PredictRequest"]["oneOf"] == [
        {"$ref": "#/components/schemas/OneText"},
        {"$ref": "#/components/schemas/ManyTexts"},
    ]
    one, many = schemas["OneText"], schemas["ManyTexts"]
    assert one["required"] == ["text"] and many["required"] == ["texts"]
    assert one["additionalProperties"] is False and many["additionalProperties"] is False
    text, texts = one["properties"]["text"], many["properties"]["texts"]
    assert text["type"] == "string" and text["pattern"] == NOT_BLANK
    assert text["maxLength"] == MAX_TEXT_CHARS
    assert texts["maxItems"] == MAX_TEXTS and texts["minItems"] == 1
    assert texts["items"]["pattern"] == NOT_BLANK and texts["items"]["maxLength"] == MAX_TEXT_CHARS
    assert schemas["OneTextToExplain"]["properties"]["label"]["enum"] == LABELS
    assert schemas["ManyTextsToExplain"]["properties"]["texts"]["maxItems"] == MAX_EXPLAIN_TEXTS


def test_info_shows_the_settings(client, export: Path) -> None:
    info = client.get("/info").json()["model"]
    assert info["name"] == export.name and info["labels"] == LABELS and info["path"] == str(export.resolve())
    assert info["variant"] == "fp32" and info["variant_reason"].startswith("export_info.json records no test")
    assert info["limits"] == {
        "max_text_chars": MAX_TEXT_CHARS,
        "max_texts": MAX_TEXTS,
        "max_body_bytes": MAX_BODY_BYTES,
        "max_explain_texts": MAX_EXPLAIN_TEXTS,
        "explain_queue": EXPLAIN_QUEUE,
    }
    assert info["batching"]["batch_timeout"] == 0.02 and info["batching"]["workers"] == 1
    assert info["api_key_required"] is False and info["explain"]["steps"] == 32


def test_ui_and_docs_work_offline(client) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script src" not in page.text and "<link" not in page.text  # one file: CSS and JS inline
    assert re.findall(r"https?://", page.text) == []  # nothing fetched from elsewhere
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', docs.text):
        assert client.get(asset).status_code == 200, asset
    assert "swagger-ui-bundle.js" in docs.text
    assert client.get("/docs/assets/..%2Fpredictor.py").status_code == 404
