"""The routes, re-registered with what they really do (``install_routes``), so ``/openapi.json`` is the
contract: security only when a key is configured, every status code with its JSON error model, the real
media types, and the request rules (exactly one of ``text``/``texts``, not blank, the length limits).
Also ours: ``/metrics``, ``/ui``, ``/explain`` and ``/docs`` (Swagger UI from the wheel, no CDN).

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time.
"""

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Depends, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute

from emotions_pl.serve.contract import (
    Explanation,
    Info,
    error_responses,
    explain_request_model,
    request_schemas,
    text_response,
)
from emotions_pl.serve.explain_queue import ExplainQueue
from emotions_pl.serve.http import EXPLAIN_PATH, PREDICT_PATH, UI_PATH, auth_dependency
from emotions_pl.serve.prometheus import metrics_endpoint
from emotions_pl.serve.settings import MAX_BODY_BYTES, MAX_EXPLAIN_TEXTS

# Swagger UI's files, served from the swagger-ui-bundle wheel so /docs works offline.
DOCS_ASSETS = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
TEXT = {"type": "string"}


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
    server: ls.LitServer,
    api_key: str | None,
    labels: Sequence[str],
    explanations: ExplainQueue | None = None,
) -> None:
    """Re-register LitServe's endpoints (same handlers) with their real contract, and add ours.

    LitServe declares every route JSON with an API-key dependency; here each route says what it answers
    (media type, every status code and its error model), the key is declared only when one is set, and
    never on /health or /ui. ``labels`` are the served model's: the only ``label`` /explain accepts.
    """
    app = server.app
    auth = [Depends(auth_dependency(api_key))]
    key = bool(api_key)
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
            **error_responses(400, 401, 408, 413, 415, 422, 500, 504, key_required=key),
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
        responses={
            200: text_response("ready", enum=["ok"]),
            503: text_response("still loading", enum=["not ready"]),
        },
    )
    app.add_api_route(
        "/info",
        theirs[("/info", "GET")].endpoint,
        operation_id="info",
        methods=["GET"],
        dependencies=auth,
        response_model=Info,
        summary="The model, its variant and why, labels, metrics, limits, batching and server settings",
        responses=error_responses(401, key_required=key),
    )
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        operation_id="metrics",
        methods=["GET"],
        dependencies=auth,
        response_class=PlainTextResponse,
        summary="Prometheus metrics (text exposition format)",
        responses={200: text_response("the metrics of every process, summed")}
        | error_responses(401, key_required=key),
    )
    app.add_api_route(
        "/",
        index,
        operation_id="index",
        methods=["GET"],
        dependencies=auth,
        response_class=PlainTextResponse,
        summary="LitServe's index",
        responses={200: text_response("`litserve running`")} | error_responses(401, key_required=key),
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
        _install_explain(app, explanations, explain_request_model(labels), auth, key)
    _install_docs(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec["components"]["schemas"].update(request_schemas(labels))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi


def _install_explain(
    app: Any, explanations: ExplainQueue, explain_request: type, auth: list[Any], key: bool
) -> None:
    async def explain(request: explain_request) -> Explanation | list[Explanation]:
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
        responses=error_responses(400, 401, 408, 413, 415, 422, 429, 500, key_required=key),
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
