"""``python -m emotions_pl serve``: an exported model over HTTP with LitServe, dynamic batching and metrics.

Process layout (LitServe): the main process forks the HTTP server(s) and spawns the inference
worker(s). Requests are validated in the HTTP process (pydantic, content type, size, API key), so a
bad request is a 4xx there and never reaches -- or fails -- a batch. Prometheus metrics from all
processes meet in a multiprocess directory that ``/metrics`` aggregates. ``/explain`` runs in one more
process per HTTP server, at the lowest CPU priority, behind its own bounded queue (``ExplainQueue``).

Batching is opportunistic (``OpportunisticLoop``): a worker blocks until a request arrives, then takes
whatever else is queued, up to ``--max-batch-size``, and runs it; it never waits for a batch to fill
unless ``--batch-timeout`` asks it to. Under load the queue fills while the model runs, so batches grow
by themselves.

A batch's texts are sorted by length and run in small chunks (``options.BATCH_CHUNK``), so padding to the
longest text of a large batch does not cost more than batching saves.

The routes are LitServe's endpoints re-registered with what they really do (``install_routes``), so
``/openapi.json`` is the contract: security only when a key is configured, every status code with its
JSON error model, the real media types, and the request rules (exactly one of ``text``/``texts``, not
blank, the length limits).

No ``from __future__ import annotations`` here: LitServe reads the request/response types from the
annotations of ``decode_request`` / ``encode_response`` at run time.
"""

import argparse
import asyncio
import functools
import json
import logging
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from itertools import pairwise
from pathlib import Path
from queue import Empty
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from litserve.loops import BatchedLoop
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.utils import LitAPIStatus, LoopResponseType
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from emotions_pl import __version__, schema
from emotions_pl.artifact.predictor import (
    VARIANT_FILES,
    Encoded,
    ExportFolderError,
    Predictor,
    read_info,
    softmax,
)
from emotions_pl.patches.litserve import LitServer
from emotions_pl.serve import options
from emotions_pl.serve.options import (
    API_KEY_ENV,
    BODY_DEADLINE_S,
    DISCARD_BYTES,
    MAX_BODY_BYTES,
    MAX_EXPLAIN_TEXTS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
)
from emotions_pl.serve.predlog import PredictionLog

OPEN_PATHS = {"/health", "/ui"}  # probes and the page itself carry no secrets; the page's calls carry the key
PREDICT_PATH = "/predict"
EXPLAIN_PATH = "/explain"
UI_PATH = "/ui"
KNOWN_PATHS = {
    "/",
    PREDICT_PATH,
    EXPLAIN_PATH,
    "/health",
    "/info",
    "/metrics",
    "/docs",
    "/openapi.json",
    UI_PATH,
}
BODY_PATHS = {PREDICT_PATH, EXPLAIN_PATH}  # POST routes whose JSON body the guard reads (415 / 413 / 408)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# "Not blank": at least one character that is not white space as JSON Schema's regexes (ECMA-262) define it
# (WhiteSpace and LineTerminator). Written as a class of literal characters, not ``\S``, because ``\s``
# differs between engines (Python's also matches U+001C-U+001F and U+0085; Rust's misses U+FEFF): the
# server, Schemathesis and any client-side validator then agree on every string.
WHITE_SPACE = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
NOT_BLANK = f"[^{WHITE_SPACE}]"
_NOT_BLANK = re.compile(NOT_BLANK)
# Swagger UI's files, served from the swagger-ui-bundle wheel so /docs works offline.
DOCS_ASSETS = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
log = logging.getLogger(__name__)


# -- request and response models (the OpenAPI document) -------------------------------------------------


def _check_text(text: str) -> str:
    if not _NOT_BLANK.search(text):
        raise ValueError("text is empty or only whitespace")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (valid JSON escape, not UTF-8): the tokenizer needs UTF-8
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": NOT_BLANK}
Text = Annotated[str, Field(strict=True), AfterValidator(_check_text)]


def request_schemas(labels: list[str]) -> dict[str, dict[str, Any]]:
    """What the validators enforce, in JSON Schema: exactly one of two shapes, non-blank texts, the limits.

    The published ``PredictRequest`` is ``oneOf`` two closed objects, so fuzzers and client generators
    see the rule (and typed clients get ``OneText | ManyTexts``); the pydantic model below validates
    it with readable messages. ``ExplainRequest`` is the same with at most ``MAX_EXPLAIN_TEXTS`` texts
    and an optional ``label`` (one of the model's ``labels``)."""
    text = {
        **TEXT_SCHEMA,
        "title": "Text",
        "description": f"one text, 1 to {MAX_TEXT_CHARS} characters, not only whitespace",
    }
    texts = {
        "type": "array",
        "items": TEXT_SCHEMA,
        "minItems": 1,
        "maxItems": MAX_TEXTS,
        "title": "Texts",
        "description": f"1 to {MAX_TEXTS} texts, each like `text`",
    }
    label = {
        "type": "string",
        "enum": labels,
        "title": "Label",
        "description": "explain this label instead of the predicted one",
    }
    explain_texts = {
        **texts,
        "maxItems": MAX_EXPLAIN_TEXTS,
        "description": f"1 to {MAX_EXPLAIN_TEXTS} texts, each like `text`",
    }
    return {
        "OneTextToExplain": {
            "type": "object",
            "title": "OneTextToExplain",
            "description": "one text, answered with one explanation",
            "properties": {"text": text, "label": label},
            "required": ["text"],
            "additionalProperties": False,
        },
        "ManyTextsToExplain": {
            "type": "object",
            "title": "ManyTextsToExplain",
            "description": "a list of texts, answered with a list of explanations in the same order",
            "properties": {"texts": explain_texts, "label": label},
            "required": ["texts"],
            "additionalProperties": False,
        },
        "ExplainRequest": {
            "title": "ExplainRequest",
            "description": "exactly one of `text` or `texts` (at most "
            f"{MAX_EXPLAIN_TEXTS}), and optionally the `label` to explain",
            "oneOf": [
                {"$ref": "#/components/schemas/OneTextToExplain"},
                {"$ref": "#/components/schemas/ManyTextsToExplain"},
            ],
            "examples": [{"text": "i feel great today"}, {"texts": ["so happy", "so sad"], "label": "joy"}],
        },
        "OneText": {
            "type": "object",
            "title": "OneText",
            "description": "one text, answered with one prediction",
            "properties": {"text": text},
            "required": ["text"],
            "additionalProperties": False,
        },
        "ManyTexts": {
            "type": "object",
            "title": "ManyTexts",
            "description": "a list of texts, answered with a list of predictions in the same order",
            "properties": {"texts": texts},
            "required": ["texts"],
            "additionalProperties": False,
        },
        "PredictRequest": {
            "title": "PredictRequest",
            "description": "exactly one of `text` (one prediction) or `texts` (a list, in the same order)",
            "oneOf": [{"$ref": "#/components/schemas/OneText"}, {"$ref": "#/components/schemas/ManyTexts"}],
            "examples": [{"text": "i feel great today"}, {"texts": ["so happy", "so sad"]}],
        },
    }


class PredictRequest(BaseModel):
    """Exactly one of ``text`` (answered with one prediction) or ``texts`` (a list, in the same order)."""

    model_config = ConfigDict(extra="forbid")
    text: Text | None = None
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "PredictRequest":
        given = self.model_fields_set & {"text", "texts"}  # an explicit null counts as given (and is wrong)
        if len(given) != 1 or getattr(self, given.pop()) is None:
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self


class Prediction(BaseModel):
    """The prediction record of ``schema.prediction``."""

    label: str = Field(description="the most probable emotion")
    score: float = Field(description="its probability")
    scores: dict[str, float] = Field(description="probability of every label")


assert set(Prediction.model_fields) == {schema.LABEL, schema.SCORE, schema.SCORES}  # one record everywhere


class ExplainRequest(PredictRequest):
    """``PredictRequest`` with at most ``MAX_EXPLAIN_TEXTS`` texts and an optional label to explain."""

    labels: ClassVar[list[str]] = schema.LABELS  # the served model's, set by build_server before the fork
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_EXPLAIN_TEXTS)] | None = None
    label: Annotated[str, Field(strict=True)] | None = None

    @model_validator(mode="after")
    def _known_label(self) -> "ExplainRequest":
        if "label" in self.model_fields_set and self.label not in self.labels:
            raise ValueError(f"label must be one of {', '.join(self.labels)} (got {self.label!r})")
        return self


class Word(BaseModel):
    """A word of the text (a run of non-whitespace characters) and its attribution."""

    word: str = Field(description="`text[start:end]`")
    start: int = Field(ge=0, description="offset of its first character, in Unicode code points")
    end: int = Field(ge=0, description="offset just past its last character")
    attribution: float | None = Field(
        description="its share of the explained label's logit (positive: for the label); null when "
        "the model never saw it (past max_length tokens, or only characters the tokenizer drops)"
    )


class Explanation(Prediction):
    """The served variant's prediction, the label explained and the words' attributions (fp32 model)."""

    explained_label: str = Field(description="`label` unless the request named another")
    words: list[Word] = Field(
        description="every word of the text, in order; with the text between them they rebuild it exactly"
    )
    truncated: bool = Field(description="the text is longer than the model's max_length tokens")
    convergence_delta: float = Field(
        description="|sum of the attributions - (logit - the reference's logit)|: the integration error"
    )


class Issue(BaseModel):
    """One problem with the request (FastAPI's validation item, without the input echoed back)."""

    loc: list[str | int] = Field(description="where: body, then the field path")
    msg: str
    type: str


class Error(BaseModel):
    """Every error answer: ``detail`` says what is wrong (a sentence, or the list of problems)."""

    detail: str | list[Issue]


class ValidationFailure(BaseModel):
    """422: the body is JSON but not a valid request."""

    detail: list[Issue]


class Info(BaseModel):
    """/info: the model (name, variant and why, labels, metrics, limits, batching) and the server."""

    model_config = ConfigDict(extra="allow")
    model: dict[str, Any]
    server: dict[str, Any]


def _errors(*codes: int, key_required: bool = False) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "the body is not valid JSON (or the client went away before sending it all)",
        401: "the API key is missing or wrong (X-API-Key, or Authorization: Bearer)",
        408: f"the body did not arrive within {BODY_DEADLINE_S:g} s; the connection is closed",
        413: f"the body is over {MAX_BODY_BYTES} bytes (bodies up to {DISCARD_BYTES} bytes are read and "
        "discarded first; the connection is closed)",
        415: "Content-Type is missing or not application/json",
        422: "the JSON is not a valid request: exactly one of text/texts, each text not blank and at most "
        f"{MAX_TEXT_CHARS} characters, at most {MAX_TEXTS} texts ({MAX_EXPLAIN_TEXTS} for /explain), no "
        "other field (/explain: `label`, one of the model's labels)",
        429: "/explain only: --explain-queue requests are already running or waiting; retry later",
        500: "internal error (nothing the client can fix)",
        504: "the request waited in the queue past --timeout",
    }
    wanted = [c for c in codes if c != 401 or key_required]
    return {c: {"model": ValidationFailure if c == 422 else Error, "description": text[c]} for c in wanted}


TEXT = {"type": "string"}


def _text(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string", **extra}}}}


# -- metrics ------------------------------------------------------------------------------------------


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


# -- the inference worker -----------------------------------------------------------------------------


class OpportunisticLoop(BatchedLoop):
    """LitServe's batched loop, collecting a batch the opportunistic way.

    Block until the first request arrives (never spin), take whatever else is queued without waiting,
    and, only when ``batch_timeout`` > 0, wait up to that long after the first request for more.
    LitServe's own collector waits ``batch_timeout`` from the start even for a lone request, and with 0
    it polls an empty queue in a busy loop.
    """

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        try:
            items = [request_queue.get(timeout=1.0)]
        except Empty:
            return [], []
        deadline = time.monotonic() + lit_api.batch_timeout
        while len(items) < lit_api.max_batch_size and items[-1] != _SENTINEL_VALUE:
            try:
                items.append(request_queue.get_nowait())
            except Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    items.append(request_queue.get(timeout=remaining))
                except Empty:
                    break
        payloads, timed_out = [], []
        apply_timeout = lit_api.request_timeout not in (-1, False)
        for item in items:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )
            if apply_timeout and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out


class EmotionAPI(ls.LitAPI):
    """Batches whole requests: ``batch`` flattens their texts and tokenizes, ``unbatch`` splits them back."""

    def __init__(
        self,
        model_dir: str,
        variant: str = "fp32",
        max_batch_size: int = 32,
        batch_timeout: float = 0.0,
        num_threads: int | None = None,
    ):
        # The batched loop also for max_batch_size=1, so batch/unbatch always run.
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=OpportunisticLoop())
        self.model_dir, self.variant, self.num_threads = model_dir, variant, num_threads

    def setup(self, device: str) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C hits the group; the main process stops workers
        # No spin-waiting between operators (ONNX Runtime here, OpenMP briefly, through options.OPENMP_ENV,
        # set by serve()): the HTTP process shares the cores and needs them while the model runs.
        self.predictor = Predictor.from_folder(
            self.model_dir, self.variant, self.num_threads, spin_wait=False
        )
        self.predictor.predict(["warm up the kernels before /health says ok"])
        for label in self.predictor.labels:
            metrics().labels.labels(label)

    def decode_request(self, request: PredictRequest) -> tuple[list[str], bool]:
        return (request.texts or [request.text]), request.texts is None

    def batch(self, inputs: list[tuple[list[str], bool]]) -> tuple[Encoded, list[tuple[int, bool]]]:
        texts = [text for request_texts, _ in inputs for text in request_texts]
        metrics().batch_requests.observe(len(inputs))
        metrics().batch_texts.observe(len(texts))
        return self.predictor.encode(texts, options.BATCH_CHUNK[self.variant]), [
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


# -- explanations: their own process, one at a time ----------------------------------------------------


_EXPLAINER: Any = None  # in the explanation process


def _load_explainer(model_dir: str, variant: str, steps: int) -> None:
    """The explanation process's start: lowest CPU priority, Ctrl+C left to the server, the explainer."""
    global _EXPLAINER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(19)
    from emotions_pl.artifact.explain import Explainer

    _EXPLAINER = Explainer.from_folder(model_dir, variant, steps, num_threads=1)


def _explain(texts: list[str], label: str | None) -> list[dict[str, Any]]:
    return _EXPLAINER.explain(texts, label)


class ExplainQueue:
    """``/explain``'s own bounded queue: at most ``limit`` requests admitted (running or waiting), the next
    answered 429; they run one after the other in one process of their own, at one PyTorch thread and
    the lowest CPU priority (nice 19), so they never starve ``/predict``: the inference worker and the
    HTTP process come first for the cores, and no explanation holds the HTTP process's GIL. (On a thread
    of the HTTP process instead, saturated ``/explain`` left ``/predict`` 37 % of its throughput on 2
    cores: docs/serving.md.)

    ``start`` runs in each HTTP process after LitServe forks it and spawns the explanation process, which
    loads the explainer before the HTTP server accepts requests. A request whose client goes away while
    it waits is dropped from the queue; one already running finishes, and frees its place then.
    """

    def __init__(self, model_dir: str, variant: str, steps: int, limit: int):
        self.model_dir, self.variant, self.steps, self.limit = model_dir, variant, steps, limit
        self.admitted = 0
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Spawn the process and wait for its explainer: the HTTP server takes no request before (a first
        /explain would otherwise wait for the load), and a load that fails stops the server."""
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=mp.get_context("spawn"),
            initializer=_load_explainer,
            initargs=(self.model_dir, self.variant, self.steps),
        )
        await asyncio.wrap_future(self._pool.submit(int))

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            for child in mp.active_children():  # in this HTTP process: only the explanation process
                child.terminate()
                child.join(5)

    def _release(self, _: Any) -> None:
        self.admitted -= 1

    async def explain(self, texts: list[str], label: str | None) -> list[dict[str, Any]]:
        if self._pool is None:
            raise RuntimeError("ExplainQueue.start() was not called in this process")
        if self.admitted >= self.limit:
            raise HTTPException(
                429, f"/explain is busy: {self.limit} requests are running or waiting; retry later"
            )
        self.admitted += 1
        job = self._pool.submit(_explain, texts, label)
        loop = asyncio.get_running_loop()
        job.add_done_callback(lambda done: loop.call_soon_threadsafe(self._release, done))
        return await asyncio.wrap_future(job)  # cancelled with the request: a waiting job never runs


# -- the HTTP process: auth, body guard, routes ----------------------------------------------------------

API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description=f"the key in ${API_KEY_ENV} (or --api-key-env)"
)
BEARER = HTTPBearer(auto_error=False, description="the same key as a bearer token (what Prometheus sends)")


def auth_dependency(expected: str | None) -> Any:
    """The routes' auth dependency: with a key, X-API-Key (or ``Authorization: Bearer``) must match it;
    without one, nothing -- and nothing is declared in the OpenAPI document either."""
    if not expected:

        def no_key_configured() -> None:
            return None

        return no_key_configured
    want = expected.encode()

    def require_key(
        api_key: Annotated[str | None, Security(API_KEY_HEADER)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    ) -> None:
        given = api_key or (bearer.credentials if bearer else "")
        if not secrets.compare_digest(given.encode("utf-8", "surrogateescape"), want):
            raise HTTPException(401, "missing or invalid API key: send it in the X-API-Key header")

    return require_key


async def _send_json(send: Any, status: int, detail: Any, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """ASGI middleware: JSON-only, size-limited /predict bodies; request metrics; the prediction log.

    LitServe would answer 500 for some non-JSON bodies; here they get 415 / 413 before FastAPI parses
    anything. The body is read once (bounded) and replayed to the app. A body over the limit is read and
    thrown away up to ``discard_bytes`` within ``deadline_s`` -- clients such as urllib and requests read
    the answer only after sending everything, and would otherwise see a reset -- then answered with 413
    and ``Connection: close``. A body declared larger than that, or still arriving at the deadline, is
    answered at once and the connection closed.
    """

    def __init__(
        self,
        app: Any,
        max_body_bytes: int = MAX_BODY_BYTES,
        prediction_log: PredictionLog | None = None,
        discard_bytes: int = DISCARD_BYTES,
        deadline_s: float = BODY_DEADLINE_S,
    ):
        self.app, self.max_body_bytes, self.prediction_log = app, max_body_bytes, prediction_log
        self.discard_bytes, self.deadline_s = discard_bytes, deadline_s

    async def _read_body(self, scope: dict, receive: Any) -> tuple[int, str, bool] | bytes:
        """The body, or ``(status, detail, close the connection)``."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            got = f"got {media_type!r}" if media_type else "none was sent"
            return 415, f"Content-Type must be application/json ({got})", False
        declared = headers.get("content-length", "")
        too_big = f"the limit is {self.max_body_bytes}"
        if declared.isdigit() and int(declared) > self.discard_bytes:
            return 413, f"body has {declared} bytes; {too_big}", True
        deadline = time.monotonic() + self.deadline_s
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if size > self.max_body_bytes:
                    return 413, f"body is over the limit of {self.max_body_bytes} bytes ({too_big})", True
                return 408, f"the body did not arrive within {self.deadline_s:g} s", True
            if message["type"] == "http.disconnect":
                return 400, "client disconnected before sending the whole body", True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body_bytes:
                chunks.append(chunk)
            else:
                chunks.clear()  # over the limit: keep reading, to answer once the client listens
                if size > self.discard_bytes:
                    return 413, f"body is over the limit of {self.max_body_bytes} bytes ({too_big})", True
            if not message.get("more_body"):
                if size > self.max_body_bytes:
                    return 413, f"body has {size} bytes; {too_big}", True
                return b"".join(chunks)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, path = time.perf_counter(), scope["path"]
        has_body = path in BODY_PATHS and scope["method"] == "POST"
        is_predict = has_body and path == PREDICT_PATH
        status, request_body, response_body = [500], b"", []

        async def send_and_watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if has_body:  # the server's own time, for clients (the /ui page shows it)
                    elapsed_ms = (time.perf_counter() - start) * 1000
                    timing = (b"server-timing", f"app;dur={elapsed_ms:.1f}".encode())
                    message = {**message, "headers": [*message.get("headers", []), timing]}
            elif is_predict and self.prediction_log is not None and message["type"] == "http.response.body":
                response_body.append(message.get("body", b""))
            await send(message)

        try:
            if has_body:
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


def ui_page() -> str:
    """The /ui page: one static HTML file (its CSS and JS inline) shipped as package data."""
    return resources.files("emotions_pl.serve").joinpath("ui/index.html").read_text("utf-8")


def swagger_ui_dir() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return Path(str(swagger_ui_bundle.swagger_ui_path))


def install_routes(
    server: ls.LitServer, key_required_value: str | None, explanations: ExplainQueue | None = None
) -> None:
    """Re-register LitServe's endpoints (same handlers) with their real contract, and add ours.

    LitServe declares every route JSON with an API-key dependency; here each route says what it answers
    (media type, every status code and its error model), the key is declared only when one is set, and
    never on /health or /ui.
    """
    app = server.app
    auth = [Depends(auth_dependency(key_required_value))]
    key = bool(key_required_value)
    theirs = {
        (route.path, method): route
        for route in app.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    ours = {"/", "/health", "/info", PREDICT_PATH, "/docs", "/redoc", "/docs/oauth2-redirect"}
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ours]

    app.add_api_route(
        PREDICT_PATH,
        theirs[(PREDICT_PATH, "POST")].endpoint,
        operation_id="predict",
        methods=["POST"],
        dependencies=auth,
        summary="Predict the emotion of one text or of a list of texts",
        description='`{"text": ...}` is answered with one prediction, `{"texts": [...]}` with a list in '
        f"the same order. The body is at most {MAX_BODY_BYTES} bytes, which holds the largest request the "
        "schema allows even with every character \\u-escaped.",
        response_description="one prediction for `text`, a list for `texts`",
        responses={
            200: {
                "headers": {
                    "Server-Timing": {
                        "description": "the server's time for the request, e.g. `app;dur=8.2` (ms)",
                        "schema": {"type": "string"},
                    }
                }
            },
            **_errors(400, 401, 408, 413, 415, 422, 500, 504, key_required=key),
        },
    )
    litserve_health, litserve_index = theirs[("/health", "GET")].endpoint, theirs[("/", "GET")].endpoint

    async def health(request: Request) -> PlainTextResponse:  # LitServe's answer, with its media type
        answer = await litserve_health(request)
        return PlainTextResponse(answer.body, status_code=answer.status_code)

    async def index(request: Request) -> PlainTextResponse:
        answer = await litserve_index(request)
        return PlainTextResponse(answer.body, status_code=answer.status_code)

    app.add_api_route(
        "/health",
        health,
        operation_id="health",
        methods=["GET"],
        response_class=PlainTextResponse,
        summary="Readiness: ok once every inference worker has loaded and warmed the model (no key)",
        responses={200: _text("ready", enum=["ok"]), 503: _text("still loading", enum=["not ready"])},
    )
    app.add_api_route(
        "/info",
        theirs[("/info", "GET")].endpoint,
        operation_id="info",
        methods=["GET"],
        dependencies=auth,
        response_model=Info,
        summary="The model, its variant and why, labels, metrics, limits, batching and server settings",
        responses=_errors(401, key_required=key),
    )
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        operation_id="metrics",
        methods=["GET"],
        dependencies=auth,
        response_class=PlainTextResponse,
        summary="Prometheus metrics (text exposition format)",
        responses={200: _text("the metrics of every process, summed")} | _errors(401, key_required=key),
    )
    app.add_api_route(
        "/",
        index,
        operation_id="index",
        methods=["GET"],
        dependencies=auth,
        response_class=PlainTextResponse,
        summary="LitServe's index",
        responses={200: _text("`litserve running`")} | _errors(401, key_required=key),
    )
    page = ui_page()

    async def ui() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_api_route(
        UI_PATH,
        ui,
        operation_id="ui",
        methods=["GET"],
        response_class=HTMLResponse,
        summary="A page to try the model in a browser (no key needed to load it; it asks for one)",
        responses={200: {"description": "the page", "content": {"text/html": {"schema": TEXT}}}},
    )
    if explanations is not None:
        _install_explain(app, explanations, auth, key)
    _install_docs(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec["components"]["schemas"].update(request_schemas(ExplainRequest.labels))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi


def _install_explain(app: Any, explanations: ExplainQueue, auth: list[Any], key: bool) -> None:
    async def explain(request: ExplainRequest) -> Explanation | list[Explanation]:
        results = await explanations.explain(request.texts or [request.text], request.label)
        out = [Explanation(**r) for r in results]
        return out if request.texts is not None else out[0]

    app.add_api_route(
        EXPLAIN_PATH,
        explain,
        operation_id="explain",
        methods=["POST"],
        dependencies=auth,
        summary="Which words drove the label: word-level attributions for one text or a list (at most "
        f"{MAX_EXPLAIN_TEXTS})",
        description="Explains the label the served variant predicts (its `label`, `score` and `scores`, "
        "as /predict answers), or the `label` the request names, with Layer Integrated Gradients on the "
        f"fp32 model ({explanations.steps} steps). Every word of the text comes with its offsets, in "
        "Unicode code points, and its attribution. Requests run one at a time on one thread; at most "
        f"{explanations.limit} are admitted, running or waiting, the next is answered 429.",
        response_description="one explanation for `text`, a list for `texts`",
        responses=_errors(400, 401, 408, 413, 415, 422, 429, 500, key_required=key),
    )


def _install_docs(app: Any) -> None:
    """/docs with Swagger UI from the swagger-ui-bundle wheel: no CDN. Without the wheel, a page that
    says plainly that the interactive docs need it, and where the document is."""
    assets = swagger_ui_dir()

    async def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse(
                "<!doctype html><title>API docs</title><p>The interactive docs need the swagger-ui-bundle-v2 "
                "package, which is not installed. The API document is at <a href='/openapi.json'>"
                "/openapi.json</a>; try the model at <a href='/ui'>/ui</a>.</p>"
            )
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="emotions_pl - API docs",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )

    async def docs_asset(name: str) -> Response:
        if assets is None or name not in DOCS_ASSETS:
            raise HTTPException(404, "not found")
        return FileResponse(assets / name)

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs/assets/{name}", docs_asset, methods=["GET"], include_in_schema=False)


# -- building and running the server -------------------------------------------------------------------


def model_metadata(
    model_dir: str, variant: str, info: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """What /info shows under "model"."""
    return {
        "name": info.get("name", Path(model_dir).name),
        "path": str(Path(model_dir).resolve()),
        "variant": variant,
        "variant_reason": getattr(args, "variant_reason", "chosen with --variant"),
        "labels": info["labels"],
        "max_length": info["max_length"],
        "metrics": info.get("metrics", {}),
        "export": {k: v for k, v in info.items() if k not in {"metrics"}},
        "limits": {
            "max_text_chars": MAX_TEXT_CHARS,
            "max_texts": MAX_TEXTS,
            "max_body_bytes": MAX_BODY_BYTES,
            "max_explain_texts": MAX_EXPLAIN_TEXTS,
            "explain_queue": args.explain_queue,
        },
        "explain": {
            "attributions": "fp32",
            "method": "layer integrated gradients",
            "steps": args.explain_steps,
        },
        "batching": {
            "max_batch_size": args.max_batch_size,
            "batch_timeout": args.batch_timeout,
            "threads": getattr(args, "resolved_threads", args.threads),
            "workers": args.workers_per_device,
        },
        "api_key_required": bool(os.environ.get(args.api_key_env) if args.api_key_env else None),
    }


def resolve_defaults(args: argparse.Namespace, info: dict[str, Any]) -> list[str]:
    """Fill in ``--variant auto`` and the default threads; the sentences that say what was chosen and why."""
    said = []
    if args.variant == options.AUTO:
        args.variant, args.variant_reason = options.choose_variant(args.model, info)
        said.append(f"variant {args.variant} (auto): {args.variant_reason}")
    else:
        args.variant_reason = "chosen with --variant"
    cores = options.available_cores()
    if args.threads:
        args.resolved_threads = args.threads
    else:
        args.resolved_threads = options.default_threads(cores, args.workers_per_device, args.variant)
        said.append(
            f"threads {args.resolved_threads} per inference worker (auto: {cores} cores, "
            f"{args.workers_per_device} worker{'s' if args.workers_per_device > 1 else ''})"
        )
    return said


def build_server(args: argparse.Namespace) -> ls.LitServer:
    info = read_info(args.model)
    args.said = resolve_defaults(args, info)
    if not (Path(args.model) / VARIANT_FILES[args.variant]).is_file():
        raise ExportFolderError(
            f"{args.model}: no {VARIANT_FILES[args.variant]}; export with --{args.variant}."
        )
    api = EmotionAPI(args.model, args.variant, args.max_batch_size, args.batch_timeout, args.resolved_threads)
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
    server.app.title, server.app.version = "emotions_pl", __version__
    server.app.description = (
        "The emotion of a short English text (sadness, joy, love, anger, fear, surprise). "
        + (
            "Every route except /health and /ui needs the API key in X-API-Key."
            if os.environ.get(args.api_key_env or "")
            else "No API key is configured: no route needs one."
        )
    )
    server.app.add_exception_handler(RequestValidationError, validation_error)
    ExplainRequest.labels = list(info["labels"])
    explanations = ExplainQueue(args.model, args.variant, args.explain_steps, args.explain_queue)
    install_routes(server, os.environ.get(args.api_key_env) if args.api_key_env else None, explanations)
    litserve_lifespan = server.app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:  # runs in each HTTP server process, after the fork
        await explanations.start()
        if prediction_log is not None:
            prediction_log.start()
        try:
            async with litserve_lifespan(app) as state:
                yield state
        finally:
            if prediction_log is not None:
                prediction_log.stop()
            explanations.stop()

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
    options.set_openmp_waiting()  # read when a worker starts OpenMP (docs/serving.md, "Threads")
    _interrupt_on_sigterm(os.getpid())
    try:
        server = build_server(args)
        for sentence in args.said:
            print(sentence, flush=True)
        print(
            f"serving {args.model} ({args.variant}, {args.resolved_threads} threads) on "
            f"http://{args.host}:{args.port} (try it at /ui; docs at /docs, metrics at /metrics)",
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
