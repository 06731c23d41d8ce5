"""The HTTP process's own layer, in front of LitServe's routes: the API key (``auth_dependency``), the body
guard (``GuardMiddleware``: JSON only, size and time limits, request metrics, the prediction log) and
the validation errors' answer (``validation_error``).

Requests are checked here, in the HTTP process (content type, size, API key, then pydantic), so a bad
request is a 4xx there and never reaches -- or fails -- a batch.

No ``from __future__ import annotations``: FastAPI reads the dependency's annotations at run time.
"""

import asyncio
import json
import secrets
import time
from typing import Annotated, Any

from fastapi import HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from emotions_pl.serve.predlog import PredictionLog
from emotions_pl.serve.prometheus import metrics
from emotions_pl.serve.settings import API_KEY_ENV, BODY_DEADLINE_S, DISCARD_BYTES, MAX_BODY_BYTES

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
