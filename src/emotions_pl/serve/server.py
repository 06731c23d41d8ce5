"""``python -m emotions_pl serve``: an exported model over HTTP with LitServe, dynamic batching and metrics.

This module builds the server from a ``Settings`` (``build_server``) and runs it (``serve``); the parts
are their own modules: the HTTP contract (``contract``), the inference worker (``worker``), the metrics
(``prometheus``), ``/explain``'s process and queue (``explain_queue``), the guard and the API key
(``http``) and the routes (``routes``). ``options`` turns the flags into the ``Settings``.

Process layout (LitServe): the main process forks the HTTP server(s) and spawns the inference
worker(s). Requests are validated in the HTTP process (pydantic, content type, size, API key), so a
bad request is a 4xx there and never reaches -- or fails -- a batch. Prometheus metrics from all
processes meet in a multiprocess directory that ``/metrics`` aggregates. ``/explain`` runs in one more
process per HTTP server, at the lowest CPU priority, behind its own bounded queue (``ExplainQueue``).
"""

import multiprocessing as mp
import os
import shutil
import signal
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi.exceptions import RequestValidationError

from emotions_pl import __version__
from emotions_pl.artifact.predictor import VARIANT_FILES, ExportFolderError, read_info
from emotions_pl.patches.litserve import LitServer
from emotions_pl.serve.explain_queue import ExplainQueue
from emotions_pl.serve.http import GuardMiddleware, validation_error
from emotions_pl.serve.predlog import PredictionLog
from emotions_pl.serve.routes import install_routes
from emotions_pl.serve.settings import (
    MAX_BODY_BYTES,
    MAX_EXPLAIN_TEXTS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
    Settings,
    set_openmp_waiting,
)
from emotions_pl.serve.worker import EmotionAPI


def model_metadata(settings: Settings, info: dict[str, Any]) -> dict[str, Any]:
    """What /info shows under "model"."""
    return {
        "name": info.get("name", Path(settings.model).name),
        "path": str(Path(settings.model).resolve()),
        "variant": settings.variant,
        "variant_reason": settings.variant_reason,
        "labels": info["labels"],
        "max_length": info["max_length"],
        "metrics": info.get("metrics", {}),
        "export": {k: v for k, v in info.items() if k not in {"metrics"}},
        "limits": {
            "max_text_chars": MAX_TEXT_CHARS,
            "max_texts": MAX_TEXTS,
            "max_body_bytes": MAX_BODY_BYTES,
            "max_explain_texts": MAX_EXPLAIN_TEXTS,
            "explain_queue": settings.explain_queue,
        },
        "explain": {
            "attributions": "fp32",
            "method": "layer integrated gradients",
            "steps": settings.explain_steps,
        },
        "batching": {
            "max_batch_size": settings.max_batch_size,
            "batch_timeout": settings.batch_timeout,
            "threads": settings.threads,
            "workers": settings.workers_per_device,
        },
        "api_key_required": bool(settings.api_key),
    }


def build_server(settings: Settings) -> ls.LitServer:
    """The LitServer, its routes and its lifespan; nothing runs until ``run`` (the app can be tested
    in-process without its lifespan: everything but a valid /predict or /explain answers)."""
    info = read_info(settings.model)
    if not (Path(settings.model) / VARIANT_FILES[settings.variant]).is_file():
        raise ExportFolderError(
            f"{settings.model}: no {VARIANT_FILES[settings.variant]}; export with --{settings.variant}."
        )
    api = EmotionAPI(
        settings.model, settings.variant, settings.max_batch_size, settings.batch_timeout, settings.threads
    )
    prediction_log = (
        PredictionLog(settings.log_dir, settings.log_text, settings.variant) if settings.log_dir else None
    )
    server = LitServer(
        api,
        accelerator="cpu",
        workers_per_device=settings.workers_per_device,
        timeout=settings.timeout,
        model_metadata=model_metadata(settings, info),
        middlewares=[(GuardMiddleware, {"max_body_bytes": MAX_BODY_BYTES, "prediction_log": prediction_log})],
        fast_queue=settings.fast_queue,
    )
    server.app.title, server.app.version = "emotions_pl", __version__
    server.app.description = (
        "The emotion of a short English text (sadness, joy, love, anger, fear, surprise). "
        + (
            "Every route except /health and /ui needs the API key in X-API-Key."
            if settings.api_key
            else "No API key is configured: no route needs one."
        )
    )
    server.app.add_exception_handler(RequestValidationError, validation_error)
    explanations = ExplainQueue(
        settings.model, settings.variant, settings.explain_steps, settings.explain_queue
    )
    install_routes(server, settings.api_key, info["labels"], explanations)
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


def serve(settings: Settings) -> int:
    """Run the server until Ctrl+C or SIGTERM (``options.run`` checks the flags and makes the settings)."""
    metrics_dir = tempfile.mkdtemp(prefix="emotions-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any process creates a metric
    set_openmp_waiting()  # read when a worker starts OpenMP (docs/serving.md, "Threads")
    _interrupt_on_sigterm(os.getpid())
    try:
        server = build_server(settings)
        for sentence in settings.said:
            print(sentence, flush=True)
        print(
            f"serving {settings.model} ({settings.variant}, {settings.threads} threads) on "
            f"http://{settings.host}:{settings.port} (try it at /ui; docs at /docs, metrics at /metrics)",
            flush=True,
        )
        server.run(
            host=settings.host, port=settings.port, generate_client_file=False, log_level=settings.log_level
        )
    except KeyboardInterrupt:
        pass
    finally:
        _stop_children()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    print("server stopped", flush=True)
    return 0
