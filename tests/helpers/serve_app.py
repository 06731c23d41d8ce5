"""The serve app in this process, without its lifespan: no inference worker, no explanation process.

Everything that answers before a batch would run can be tested on it with Starlette's ``TestClient``:
the body guard, the API key, request validation, the OpenAPI document, /info, /ui and /docs. The export
folder can be a stand-in (``fake_export``): building the server reads only ``export_info.json`` and
checks that the variant's file is there; the model is loaded by the workers, which never start here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

from starlette.testclient import TestClient

from emotions_pl.artifact.predictor import VARIANT_FILES
from emotions_pl.schema import LABELS
from emotions_pl.serve import options
from emotions_pl.serve.server import build_server
from emotions_pl.serve.settings import API_KEY_ENV


def fake_export(folder: Path, labels: list[str] = LABELS) -> Path:
    """A folder that ``build_server`` accepts: ``export_info.json`` and an empty file per variant."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"name": folder.name, "labels": labels, "max_length": 64, "metrics": {"validation": {}}}
    (folder / "export_info.json").write_text(json.dumps(info))
    for name in VARIANT_FILES.values():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return folder


def app_client(model_dir: Path, *flags: str, api_key: str | None = None) -> TestClient:
    """``serve --model DIR FLAGS`` built as ``serve`` builds it (``api_key`` in ``$LIT_SERVER_API_KEY``),
    as a client of its app. Not entered as a context manager: the lifespan, which needs launched
    workers, never runs. /health answers 503 (no worker is ready)."""
    environ = {k: v for k, v in os.environ.items() if k != API_KEY_ENV} | (
        {API_KEY_ENV: api_key} if api_key else {}
    )
    args = options.build_parser().parse_args(["--model", str(model_dir), *flags])
    with mock.patch.dict(os.environ, environ, clear=True):
        settings = options.make_settings(args)
    server = build_server(settings)
    server.workers_setup_status = {}  # what LitServe's /health reads before any worker reports
    return TestClient(server.app, raise_server_exceptions=False)
