"""The server as a real process on 127.0.0.1: parity over HTTP, load, metrics, a connection cut off, the
worker processes, the key from the environment, Ctrl+C and SIGTERM (no process and no semaphore left).

The HTTP layer on its own -- the body guard, the API key, request validation, the OpenAPI document,
/ui and /docs -- is tested in this process, without a server, in test_serve_app.py."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import os
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
    assert "leaked semaphore" not in srv.log(), srv.log()
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


def test_bad_input_never_reaches_or_fails_a_batch(server: Server) -> None:
    """Refused in the HTTP process (test_serve_app.py has every case); the worker serves on."""
    bad = [
        {"json": {"texts": ["fine", "   "]}},
        {"json": {"text": "a", "texts": ["b"]}},
        {"content": b'{"text": "i feel', "headers": {"Content-Type": "application/json"}},
        {"content": b'{"text": "hi"}', "headers": {"Content-Type": "text/plain"}},
        {"json": {"texts": ["a" * 1500] * 1500}},
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        statuses = [client.post("/predict", **kwargs).status_code for kwargs in bad]
        ok = client.post("/predict", json={"text": "still serving?"})
    assert statuses == [422, 422, 400, 415, 413]
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


def test_python_client_and_no_key_needed(server: Server, expected: dict) -> None:
    client = EmotionClient(server.url, api_key=None)
    assert client.health()
    assert _same(client.predict(TEXTS[1]), expected[TEXTS[1]])
    texts = list(expected)[: options.MAX_TEXTS + 10]  # more than one request's worth: the client splits them
    assert all(_same(got, expected[t]) for got, t in zip(client.predict_many(texts), texts, strict=True))
    with pytest.raises(EmotionServiceError, match=r"422.*empty or only whitespace"):
        client.predict("   ")


def test_api_key_onnx_variant_and_sigterm(exported_dir: Path, tmp_path: Path) -> None:
    """A second server: the key from the environment (test_serve_app.py has every route and header), the
    ONNX variant, stopped with SIGTERM (docker stop): exit 0, no process and no semaphore left."""
    srv = Server(
        exported_dir, tmp_path / "server.log", "--variant", "onnx", env={options.API_KEY_ENV: "s3cret"}
    )
    try:
        url = f"{srv.url}/predict"
        assert httpx.post(url, json={"text": TEXTS[0]}, timeout=30).status_code == 401
        assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200
        scrape = httpx.get(f"{srv.url}/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert scrape.status_code == 200 and "emotions_predicted_label_total" in scrape.text
        got = httpx.post(url, json={"texts": TEXTS}, headers={"X-API-Key": "s3cret"}, timeout=30).json()
        want = Predictor.from_folder(exported_dir, "onnx").predict(TEXTS)
        assert all(_same(g, w) for g, w in zip(got, want, strict=True))
        assert EmotionClient(srv.url, api_key="s3cret").info()["model"]["variant"] == "onnx"
        explained = httpx.post(
            f"{srv.url}/explain", json={"text": TEXTS[0]}, headers={"X-API-Key": "s3cret"}, timeout=60
        )
        assert explained.status_code == 200  # the explanation process ran: its queues must be released
    except BaseException:
        srv.stop(signal.SIGTERM)
        raise
    srv.stop(signal.SIGTERM)
    assert "leaked semaphore" not in srv.log(), srv.log()
    assert "server stopped" in srv.log()


def test_worker_monitor_stops_before_the_manager_it_polls(
    exported_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """LitServe's monitor thread, polling every 1 ms, must not call into the manager after shutdown.

    Without ``patches.litserve.LitServer``'s swap it crashes with ConnectionResetError/EOFError once the
    manager is gone: the traceback that showed up after an occasional Ctrl+C. It drives LitServe's own
    (private) shutdown and monitor, the names the patch relies on: a LitServe that renames them fails here.
    """
    server = build_server(
        options.make_settings(options.build_parser().parse_args(["--model", str(exported_dir)]))
    )
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
