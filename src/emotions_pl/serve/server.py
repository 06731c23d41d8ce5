"""``python -m emotions_pl serve``: an exported model over HTTP with LitServe, dynamic batching and metrics.

Process layout (LitServe): the main process forks the HTTP server(s) and spawns the inference
worker(s). Requests are validated in the HTTP process (pydantic, content type, size, API key), so a
bad request is a 4xx there and never reaches -- or fails -- a batch. Prometheus metrics from all
processes meet in a multiprocess directory that ``/metrics`` aggregates.

No ``from __future__ import annotations`` here: LitServe reads the request/response types from the
annotations of ``decode_request`` / ``encode_response`` at run time.
"""

import argparse
import functools
import json
import logging
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import tempfile
import time
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from litserve.loops import BatchedLoop
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from emotions_pl import schema
from emotions_pl.artifact.predictor import (
    VARIANT_FILES,
    Encoded,
    ExportFolderError,
    Predictor,
    read_info,
    softmax,
)
from emotions_pl.patches.litserve import LitServer
from emotions_pl.serve.options import API_KEY_ENV, MAX_BODY_BYTES, MAX_TEXT_CHARS, MAX_TEXTS
from emotions_pl.serve.predlog import PredictionLog

OPEN_PATHS = {"/health"}  # liveness/readiness probes carry no secrets
PREDICT_PATH = "/predict"
KNOWN_PATHS = {"/", PREDICT_PATH, "/health", "/info", "/metrics", "/docs", "/openapi.json"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
log = logging.getLogger(__name__)


def _check_text(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty or only whitespace")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    return text


Text = Annotated[str, Field(strict=True), AfterValidator(_check_text)]


class PredictRequest(BaseModel):
    """Exactly one of ``text`` (answered with one prediction) or ``texts`` (a list, in the same order)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "i feel great today"}, {"texts": ["so happy", "so sad"]}]},
    )
    text: Text | None = Field(None, description=f"one text, 1 to {MAX_TEXT_CHARS} characters")
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)] | None = Field(
        None, description=f"1 to {MAX_TEXTS} texts, each 1 to {MAX_TEXT_CHARS} characters"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "PredictRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self


class Prediction(BaseModel):
    """The prediction record of ``schema.prediction``."""

    label: str = Field(description="the most probable emotion")
    score: float = Field(description="its probability")
    scores: dict[str, float] = Field(description="probability of every label")


assert set(Prediction.model_fields) == {schema.LABEL, schema.SCORE, schema.SCORES}  # one record everywhere


@functools.cache
def metrics() -> SimpleNamespace:
    """Prometheus metrics, created on first use in each process (after PROMETHEUS_MULTIPROC_DIR is set)."""
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter(
            "emotions_http_requests_total", "HTTP requests by path and status code", ["path", "status"]
        ),
        latency=Histogram(
            "emotions_http_request_duration_seconds",
            "HTTP request latency",
            ["path"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_requests=Histogram(
            "emotions_batch_requests", "requests per model batch", buckets=BATCH_BUCKETS
        ),
        batch_texts=Histogram("emotions_batch_texts", "texts per model batch", buckets=BATCH_BUCKETS),
        labels=Counter("emotions_predicted_label_total", "predicted texts by label", ["label"]),
    )


API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description=f"required when ${API_KEY_ENV} (or --api-key-env) is set"
)


class EmotionAPI(ls.LitAPI):
    """Batches whole requests: ``batch`` flattens their texts and tokenizes, ``unbatch`` splits them back."""

    def __init__(
        self,
        model_dir: str,
        variant: str = "fp32",
        max_batch_size: int = 32,
        batch_timeout: float = 0.01,
        api_key_env: str | None = API_KEY_ENV,
        num_threads: int | None = None,
    ):
        # BatchedLoop also for max_batch_size=1, so batch/unbatch always run.
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=BatchedLoop())
        self.model_dir, self.variant, self.num_threads = model_dir, variant, num_threads
        self.api_key_env = api_key_env

    def setup(self, device: str) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C hits the group; the main process stops workers
        self.predictor = Predictor.from_folder(self.model_dir, self.variant, self.num_threads)
        self.predictor.predict(["warm up the kernels before /health says ok"])
        for label in self.predictor.labels:
            metrics().labels.labels(label)

    def decode_request(self, request: PredictRequest) -> tuple[list[str], bool]:
        return (request.texts or [request.text]), request.texts is None

    def batch(self, inputs: list[tuple[list[str], bool]]) -> tuple[Encoded, list[tuple[int, bool]]]:
        texts = [text for request_texts, _ in inputs for text in request_texts]
        metrics().batch_requests.observe(len(inputs))
        metrics().batch_texts.observe(len(texts))
        return self.predictor.encode(texts), [
            (len(request_texts), single) for request_texts, single in inputs
        ]

    def predict(self, x: tuple[Encoded, list[tuple[int, bool]]]) -> tuple[np.ndarray, list[tuple[int, bool]]]:
        encoded, shapes = x
        return softmax(self.predictor.run(encoded)), shapes  # run() is under torch.inference_mode for fp32

    def unbatch(self, output: tuple[np.ndarray, list[tuple[int, bool]]]) -> list[tuple[np.ndarray, bool]]:
        probs, shapes = output
        bounds = np.cumsum([0] + [n for n, _ in shapes]).tolist()
        return [(probs[a:b], single) for (a, b), (_, single) in zip(pairwise(bounds), shapes, strict=True)]

    def encode_response(self, output: tuple[np.ndarray, bool]) -> Prediction | list[Prediction]:
        probs, single = output
        results = [Prediction(**r) for r in self.predictor.results(probs)]
        for r in results:
            metrics().labels.labels(r.label).inc()
        return results[0] if single else results

    def authorize(self, request: Request, api_key: str | None = Security(API_KEY_HEADER)) -> None:
        """LitServe's auth hook (every route it registers, plus /metrics); /health stays open.

        ``Authorization: Bearer <key>`` is accepted too: it is all a Prometheus scrape can send.
        """
        expected = os.environ.get(self.api_key_env) if self.api_key_env else None
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        given = api_key or (bearer if scheme.lower() == "bearer" else "")
        if expected and request.url.path not in OPEN_PATHS and not secrets.compare_digest(given, expected):
            raise HTTPException(401, "missing or invalid API key: send it in the X-API-Key header")


async def _send_json(send: Any, status: int, detail: Any) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """ASGI middleware: JSON-only, size-limited /predict bodies; request metrics; the prediction log.

    LitServe would answer 500 for some non-JSON bodies; here they get 415 / 413 before FastAPI parses
    anything. The body is read once (bounded) and replayed to the app.
    """

    def __init__(
        self, app: Any, max_body_bytes: int = MAX_BODY_BYTES, prediction_log: PredictionLog | None = None
    ):
        self.app, self.max_body_bytes, self.prediction_log = app, max_body_bytes, prediction_log

    async def _read_body(self, scope: dict, receive: Any) -> tuple[int, str] | bytes:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            got = f"got {media_type!r}" if media_type else "none was sent"
            return 415, f"Content-Type must be application/json ({got})"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return 413, f"body has {declared} bytes; the limit is {self.max_body_bytes}"
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, "client disconnected before sending the whole body"
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return 413, f"body is over the limit of {self.max_body_bytes} bytes"
            if not message.get("more_body"):
                return b"".join(chunks)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, path = time.perf_counter(), scope["path"]
        is_predict = path == PREDICT_PATH and scope["method"] == "POST"
        status, request_body, response_body = [500], b"", []

        async def send_and_watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif is_predict and self.prediction_log is not None and message["type"] == "http.response.body":
                response_body.append(message.get("body", b""))
            await send(message)

        try:
            if is_predict:
                body = await self._read_body(scope, receive)
                if isinstance(body, tuple):
                    await _send_json(send_and_watch, *body)
                    return
                request_body, receive = body, _replay(body, receive)
            await self.app(scope, receive, send_and_watch)
        finally:
            elapsed = time.perf_counter() - start
            label = path if path in KNOWN_PATHS else "other"
            metrics().requests.labels(label, str(status[0])).inc()
            metrics().latency.labels(label).observe(elapsed)
            if is_predict and status[0] == 200 and self.prediction_log is not None:
                self.prediction_log.put(request_body, b"".join(response_body), elapsed)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()  # the app only waits for a disconnect from here on
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's error list without echoing the (possibly huge) input; invalid JSON is a 400."""
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    for e, raw in zip(errors, exc.errors(), strict=True):
        if e["type"] == "json_invalid":
            e["msg"] = (
                f"invalid JSON ({raw.get('ctx', {}).get('error', 'decode error')}, character {e['loc'][-1]})"
            )
            return JSONResponse({"detail": [e]}, status_code=400)
    return JSONResponse({"detail": errors}, status_code=422)


def metrics_endpoint() -> Response:
    """Prometheus text format, summed over the HTTP and inference processes."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def model_metadata(
    model_dir: str, variant: str, info: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """What /info shows under "model"."""
    return {
        "name": info.get("name", Path(model_dir).name),
        "path": str(Path(model_dir).resolve()),
        "variant": variant,
        "labels": info["labels"],
        "max_length": info["max_length"],
        "metrics": info.get("metrics", {}),
        "export": {k: v for k, v in info.items() if k not in {"metrics"}},
        "limits": {
            "max_text_chars": MAX_TEXT_CHARS,
            "max_texts": MAX_TEXTS,
            "max_body_bytes": MAX_BODY_BYTES,
        },
        "batching": {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout},
    }


def build_server(args: argparse.Namespace) -> ls.LitServer:
    info = read_info(args.model)
    if not (Path(args.model) / VARIANT_FILES[args.variant]).is_file():
        raise ExportFolderError(
            f"{args.model}: no {VARIANT_FILES[args.variant]}; export with --{args.variant}."
        )
    threads = args.threads or max(1, ((os.cpu_count() or 1) - 1) // args.workers_per_device)
    api = EmotionAPI(
        args.model, args.variant, args.max_batch_size, args.batch_timeout, args.api_key_env, threads
    )
    prediction_log = PredictionLog(args.log_dir, args.log_text, args.variant) if args.log_dir else None
    server = LitServer(
        api,
        accelerator="cpu",
        workers_per_device=args.workers_per_device,
        timeout=args.timeout,
        model_metadata=model_metadata(args.model, args.variant, info, args),
        middlewares=[(GuardMiddleware, {"max_body_bytes": MAX_BODY_BYTES, "prediction_log": prediction_log})],
        fast_queue=args.fast_queue,
    )
    server.app.add_exception_handler(RequestValidationError, validation_error)
    server.app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        dependencies=[Depends(api.authorize)],
        summary="Prometheus metrics",
    )
    if prediction_log is not None:
        litserve_lifespan = server.app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: Any) -> Any:  # runs in each HTTP server process, after the fork
            prediction_log.start()
            try:
                async with litserve_lifespan(app) as state:
                    yield state
            finally:
                prediction_log.stop()

        server.app.router.lifespan_context = lifespan
    return server


def _interrupt_on_sigterm(main_pid: int) -> None:
    """SIGTERM takes LitServe's Ctrl+C path, which stops the HTTP and inference processes."""

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)  # a forked child that has not set its own handler
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)


def _stop_children() -> None:
    """Whatever LitServe left running (e.g. interrupted during start-up) is stopped, not orphaned."""
    for child in mp.active_children():
        child.terminate()
    for child in mp.active_children():
        child.join(5)
        if child.is_alive():
            child.kill()


def serve(args: argparse.Namespace) -> int:
    """Run the server until Ctrl+C or SIGTERM (``options.run`` checks the flags first)."""
    metrics_dir = tempfile.mkdtemp(prefix="emotions-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any process creates a metric
    _interrupt_on_sigterm(os.getpid())
    try:
        server = build_server(args)
        print(
            f"serving {args.model} ({args.variant}) on http://{args.host}:{args.port} "
            f"(docs at /docs, metrics at /metrics)",
            flush=True,
        )
        server.run(host=args.host, port=args.port, generate_client_file=False, log_level=args.log_level)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_children()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    print("server stopped", flush=True)
    return 0
