"""The server as a real process on 127.0.0.1: bad input, parity over HTTP, load, metrics, auth, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emotions_pl.artifact.predictor import Predictor
from emotions_pl.schema import LABELS
from emotions_pl.serve import options
from emotions_pl.serve.client import EmotionClient, EmotionServiceError
from emotions_pl.serve.server import NOT_BLANK, build_server
from helpers import Server

pytestmark = pytest.mark.integration

TEXTS = [
    "i feel so happy and grateful today",
    "i am terrified of what comes next",
    "why would anyone do that, i am furious",
    "i love spending quiet evenings with you",
    "wow, i did not see that coming at all",
    "i feel empty and tired of everything",
    " ".join(["a long text that the tokenizer truncates at the export's max length"] * 12),
]


@pytest.fixture(scope="module")
def server(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """fp32, no API key, prediction log on; stopped with SIGINT (Ctrl+C) at the end, checked for orphans."""
    tmp = tmp_path_factory.mktemp("server")
    srv = Server(
        exported_dir, tmp / "server.log", "--log-dir", str(tmp / "predlog"), "--batch-timeout", "0.02"
    )
    srv.predlog = tmp / "predlog"
    yield srv
    srv.stop(signal.SIGINT)
    records = [
        json.loads(line)
        for f in srv.predlog.glob("predictions-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert records and all({"text_chars", "label", "score", "latency_ms"} <= r.keys() for r in records)
    assert all("text" not in r for r in records)


@pytest.fixture(scope="module")
def expected(exported_dir: Path) -> dict[str, dict]:
    predictor = Predictor.from_folder(exported_dir)
    texts = TEXTS + [f"{t} number {i}" for i, t in enumerate(TEXTS * 30)]
    return dict(zip(texts, predictor.predict(texts), strict=True))


def _same(got: dict, want: dict) -> bool:
    return got["label"] == want["label"] and all(
        abs(got["scores"][k] - v) < 1e-5 for k, v in want["scores"].items()
    )


BAD_INPUT = {
    "invalid JSON": (
        {"content": b'{"text": "i feel', "headers": {"Content-Type": "application/json"}},
        400,
        "invalid JSON",
    ),
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
    "text too long": (
        {"json": {"text": "a" * (options.MAX_TEXT_CHARS + 1)}},
        422,
        f"the limit is {options.MAX_TEXT_CHARS}",
    ),
    "too many texts": (
        {"json": {"texts": ["hi"] * (options.MAX_TEXTS + 1)}},
        422,
        f"at most {options.MAX_TEXTS}",
    ),
    "null beside text": ({"json": {"text": "a", "texts": None}}, 422, "exactly one of 'text'"),
    "body too large": ({"json": {"texts": ["a" * 1500] * 1500}}, 413, f"limit is {options.MAX_BODY_BYTES}"),
    "no content type": ({"content": b'{"text": "i feel fine"}'}, 415, "none was sent"),
    "text/plain": (
        {"content": b'{"text": "hi"}', "headers": {"Content-Type": "text/plain"}},
        415,
        "got 'text/plain'",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_a_client_error(server: Server, case: str) -> None:
    kwargs, status, message = BAD_INPUT[case]
    response = httpx.post(f"{server.url}/predict", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in json.dumps(response.json()["detail"])
    assert "a" * 1000 not in response.text  # the input is not echoed back
    ok = httpx.post(f"{server.url}/predict", json={"text": "still serving?"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["label"] in LABELS


def test_predictions_over_http_equal_the_export(server: Server, expected: dict) -> None:
    one = httpx.post(f"{server.url}/predict", json={"text": TEXTS[0]}, timeout=30).json()
    assert set(one) == {"label", "score", "scores"} and list(one["scores"]) == LABELS
    assert _same(one, expected[TEXTS[0]]) and one["score"] == max(one["scores"].values())
    many = httpx.post(f"{server.url}/predict", json={"texts": TEXTS}, timeout=30).json()
    assert len(many) == len(TEXTS)
    assert all(_same(got, expected[t]) for got, t in zip(many, TEXTS, strict=True))


def test_200_concurrent_requests_are_answered_in_order(server: Server, expected: dict) -> None:
    texts = list(expected)[len(TEXTS) :][:200]

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            calls = [
                client.post("/predict", json={"text": t} if i % 4 else {"texts": [t, TEXTS[i % len(TEXTS)]]})
                for i, t in enumerate(texts)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(texts)
    for i, (text, response) in enumerate(zip(texts, responses, strict=True)):
        body = response.json()
        if i % 4:
            assert _same(body, expected[text]), (text, body)
        else:
            assert _same(body[0], expected[text]) and _same(body[1], expected[TEXTS[i % len(TEXTS)]])


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_health_info_and_metrics(server: Server, exported_dir: Path) -> None:
    health = httpx.get(f"{server.url}/health", timeout=30)
    assert health.status_code == 200 and health.text == "ok"
    info = httpx.get(f"{server.url}/info", timeout=30).json()["model"]
    export_info = json.loads((exported_dir / "export_info.json").read_text())
    assert info["name"] == exported_dir.name and info["labels"] == LABELS and info["variant"] == "fp32"
    assert info["metrics"] == export_info["metrics"] and "val/f1_macro" in info["metrics"]["validation"]
    assert info["export"]["source_checkpoint"]["sha256"] == export_info["source_checkpoint"]["sha256"]
    assert info["limits"] == {
        "max_text_chars": options.MAX_TEXT_CHARS,
        "max_texts": options.MAX_TEXTS,
        "max_body_bytes": options.MAX_BODY_BYTES,
        "max_explain_texts": options.MAX_EXPLAIN_TEXTS,
        "explain_queue": options.EXPLAIN_QUEUE,
    }

    before = _metrics(server.url)
    labels = [httpx.post(f"{server.url}/predict", json={"text": TEXTS[0]}, timeout=30).json()["label"]]
    labels += [
        r["label"] for r in httpx.post(f"{server.url}/predict", json={"texts": TEXTS[:2]}, timeout=30).json()
    ]
    assert httpx.post(f"{server.url}/predict", json={"text": ""}, timeout=30).status_code == 422
    after = _metrics(server.url)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("emotions_http_requests_total", path="/predict", status="200") == 2
    assert delta("emotions_http_requests_total", path="/predict", status="422") == 1
    assert delta("emotions_http_request_duration_seconds_count", path="/predict") == 3
    assert delta("emotions_batch_texts_sum") == 3
    assert delta("emotions_batch_requests_count") in (1, 2)  # the two requests may share a batch
    for label in LABELS:
        assert delta("emotions_predicted_label_total", label=label) == labels.count(label)


def _operations(spec: dict) -> dict[str, dict]:
    return {
        f"{method.upper()} {path}": op for path, ops in spec["paths"].items() for method, op in ops.items()
    }


def test_openapi_describes_request_and_response(server: Server) -> None:
    """No key configured: nothing declares security; every route's statuses and real media types."""
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
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
    assert text["maxLength"] == options.MAX_TEXT_CHARS
    assert texts["maxItems"] == options.MAX_TEXTS and texts["minItems"] == 1
    assert texts["items"]["pattern"] == NOT_BLANK and texts["items"]["maxLength"] == options.MAX_TEXT_CHARS


def test_the_largest_valid_request_fits_the_body_limit(server: Server) -> None:
    """64 texts of 2,000 characters, every one \\u-escaped as a surrogate pair: valid by the schema, so
    it must not be refused for its size."""
    body = json.dumps({"texts": ["\U0001f600" * options.MAX_TEXT_CHARS] * options.MAX_TEXTS}).encode()
    assert len(body) <= options.MAX_BODY_BYTES
    response = httpx.post(
        f"{server.url}/predict", content=body, headers={"Content-Type": "application/json"}, timeout=120
    )
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()) == options.MAX_TEXTS


class Prober(threading.Thread):
    """Another client, sending a prediction every 50 ms while a test abuses the server."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.results = url, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                status = client.post(f"{self.url}/predict", json={"text": "still serving?"}).status_code
                self.results.append((status, time.perf_counter() - start))
                time.sleep(0.05)

    def __enter__(self) -> Prober:
        self.start()
        deadline = time.monotonic() + 30
        while not self.results and time.monotonic() < deadline:  # serving before the abuse starts
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # and after it
        self.stop.set()
        self.join(60)
        assert len(self.results) >= 2, self.results
        assert {status for status, _ in self.results} == {200}, self.results
        assert max(seconds for _, seconds in self.results) < 5, self.results


def test_a_60_mb_body_sent_in_full_gets_a_readable_413(server: Server) -> None:
    """urllib sends the whole body before it reads the answer: the server reads and discards it (up to
    64 MiB) and answers 413 JSON, then closes; another client is served meanwhile."""
    body = b'{"text": "' + b"a" * 60_000_000 + b'"}'
    request = urllib.request.Request(
        f"{server.url}/predict", data=body, headers={"Content-Type": "application/json"}
    )
    with Prober(server.url), pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=60)
    assert answer.value.code == 413
    assert answer.value.headers["Connection"] == "close"
    assert answer.value.headers["Content-Type"] == "application/json"
    assert f"the limit is {options.MAX_BODY_BYTES}" in json.loads(answer.value.read())["detail"]


def test_a_200_mb_body_is_refused_at_once(server: Server) -> None:
    """Past the 64 MiB bound the server answers 413 and closes without reading the body; a client that
    is still sending sees the connection closed (or, if it reads early, the 413)."""
    import requests

    body = b'{"text": "' + b"a" * 200_000_000 + b'"}'
    start = time.perf_counter()
    with Prober(server.url):
        try:
            response = requests.post(
                f"{server.url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=60
            )
        except requests.ConnectionError:
            pass
        else:
            assert response.status_code == 413 and "200000012 bytes" in response.json()["detail"]
    assert time.perf_counter() - start < 30


def test_a_slow_drip_body_is_cut_off_at_the_deadline(server: Server) -> None:
    """A body that trickles in is answered 408 (and the connection closed) after 10 s; others are served."""
    import socket

    start = time.perf_counter()
    with Prober(server.url), socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        sock.settimeout(0.5)
        answer = b""
        while time.perf_counter() - start < 25 and b"\r\n\r\n" not in answer:
            try:
                sock.sendall(b" ")
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    elapsed = time.perf_counter() - start
    head, _, detail = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"connection: close" in head.lower()
    assert "did not arrive within 10 s" in json.loads(detail)["detail"]
    assert options.BODY_DEADLINE_S - 1 < elapsed < options.BODY_DEADLINE_S + 10


def test_auto_variant_threads_and_timing_are_said(server: Server) -> None:
    log = server.log()
    assert "variant fp32 (auto): export_info.json records no test accuracy per variant" in log
    assert f"threads {options.available_cores()} per inference worker (auto" in log
    response = httpx.post(f"{server.url}/predict", json={"text": TEXTS[0]}, timeout=30)
    assert response.headers["server-timing"].startswith("app;dur=")
    info = httpx.get(f"{server.url}/info", timeout=30).json()["model"]
    assert info["variant_reason"].startswith("export_info.json records no test accuracy")
    assert info["batching"]["batch_timeout"] == 0.02 and info["api_key_required"] is False


def test_inference_workers_get_the_short_openmp_spin(server: Server) -> None:
    if any(name in os.environ for name in options.OPENMP_ENV):
        pytest.skip("this environment chose its own OpenMP waiting, which serve keeps")
    workers = [
        p
        for p in server.family
        if "spawn" in " ".join(p.cmdline()) or "multiprocessing" in " ".join(p.cmdline())
    ]
    assert workers, [p.cmdline() for p in server.family]
    for worker in workers:
        env = worker.environ()
        assert {name: env.get(name) for name in options.OPENMP_ENV} == options.OPENMP_ENV


def test_ui_and_docs_work_offline(server: Server) -> None:
    page = httpx.get(f"{server.url}/ui", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script src" not in page.text and "<link" not in page.text  # one file: CSS and JS inline
    assert re.findall(r"https?://", page.text) == []  # nothing fetched from elsewhere
    docs = httpx.get(f"{server.url}/docs", timeout=30)
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', docs.text):
        assert httpx.get(f"{server.url}{asset}", timeout=30).status_code == 200, asset
    assert "swagger-ui-bundle.js" in docs.text
    assert httpx.get(f"{server.url}/docs/assets/..%2Fpredictor.py", timeout=30).status_code == 404


def test_python_client_and_no_key_needed(server: Server, expected: dict) -> None:
    client = EmotionClient(server.url, api_key=None)
    assert client.health()
    assert _same(client.predict(TEXTS[1]), expected[TEXTS[1]])
    texts = list(expected)[: options.MAX_TEXTS + 10]  # more than one request's worth: the client splits them
    assert all(_same(got, expected[t]) for got, t in zip(client.predict_many(texts), texts, strict=True))
    with pytest.raises(EmotionServiceError, match=r"422.*empty or only whitespace"):
        client.predict("   ")


def test_api_key_onnx_variant_and_sigterm(exported_dir: Path, tmp_path: Path) -> None:
    """A second server: key required (but /health open), the ONNX variant, stopped with SIGTERM."""
    srv = Server(
        exported_dir, tmp_path / "server.log", "--variant", "onnx", env={options.API_KEY_ENV: "s3cret"}
    )
    try:
        url = f"{srv.url}/predict"
        missing = httpx.post(url, json={"text": TEXTS[0]}, timeout=30)
        wrong = httpx.post(url, json={"text": TEXTS[0]}, headers={"X-API-Key": "nope"}, timeout=30)
        assert missing.status_code == wrong.status_code == 401
        assert "X-API-Key" in missing.json()["detail"]
        assert httpx.get(f"{srv.url}/metrics", timeout=30).status_code == 401
        scrape = httpx.get(f"{srv.url}/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert (
            scrape.status_code == 200 and "emotions_predicted_label_total" in scrape.text
        )  # Prometheus's way
        assert httpx.get(f"{srv.url}/info", timeout=30).status_code == 401
        assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200
        assert httpx.get(f"{srv.url}/ui", timeout=30).status_code == 200  # the page asks for the key itself
        spec = httpx.get(f"{srv.url}/openapi.json", timeout=30).json()
        for name, op in _operations(spec).items():
            if name in {"GET /health", "GET /ui"}:
                assert "security" not in op and "401" not in op["responses"], name
            else:
                assert op["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}], name
                assert "401" in op["responses"], name
        assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
        got = httpx.post(url, json={"texts": TEXTS}, headers={"X-API-Key": "s3cret"}, timeout=30).json()
        want = Predictor.from_folder(exported_dir, "onnx").predict(TEXTS)
        assert all(_same(g, w) for g, w in zip(got, want, strict=True))
        assert EmotionClient(srv.url, api_key="s3cret").info()["model"]["variant"] == "onnx"
    except BaseException:
        srv.stop(signal.SIGTERM)
        raise
    srv.stop(signal.SIGTERM)


def test_worker_monitor_stops_before_the_manager_it_polls(
    exported_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """LitServe's monitor thread, polling every 1 ms, must not call into the manager after shutdown.

    Without ``patches.litserve.LitServer``'s swap it crashes with ConnectionResetError/EOFError once the
    manager is gone: the traceback that showed up after an occasional Ctrl+C. It drives LitServe's own
    (private) shutdown and monitor, the names the patch relies on: a LitServe that renames them fails here.
    """
    server = build_server(options.build_parser().parse_args(["--model", str(exported_dir)]))
    manager = mp.Manager()
    server._shutdown_event = manager.Event()
    server._transport = SimpleNamespace(close=lambda send_sentinel: None)
    server.inference_workers = []
    server.monitor_internal = 0.001
    with caplog.at_level(logging.ERROR, logger="litserve.server"):
        server._start_worker_monitoring(manager, {})
        time.sleep(0.05)  # the monitor is polling the live manager
        server._perform_graceful_shutdown(manager, {}, "keyboard_interrupt")
        time.sleep(0.2)  # 200 polls' worth of time after the manager is gone
    monitors = [t for t in threading.enumerate() if t.name == "litserve-monitoring"]
    assert not monitors, "the monitor thread outlived the shutdown"
    assert not caplog.records, [r.getMessage() for r in caplog.records]
