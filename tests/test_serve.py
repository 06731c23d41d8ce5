"""The server as a real process on 127.0.0.1: bad input, parity over HTTP, load, metrics, auth, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import signal
import threading
import time
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
from emotions_pl.serve.server import build_server
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
    "body too large": ({"json": {"texts": ["a" * 1500] * 800}}, 413, f"limit is {options.MAX_BODY_BYTES}"),
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


def test_openapi_describes_request_and_response(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    assert {"text", "texts"} <= schemas["PredictRequest"]["properties"].keys()
    assert {"label", "score", "scores"} <= schemas["Prediction"]["properties"].keys()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/PredictRequest")
    assert httpx.get(f"{server.url}/docs", timeout=30).status_code == 200


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
