"""``python -m emotions_pl serve``: its flags, limits and defaults, parsed before LitServe is imported.

``run`` checks the flags, then starts ``server.serve``; ``--help`` and a bad flag cost no import of
the server stack.
"""

import argparse
import os

from emotions_pl.artifact.predictor import VARIANT_FILES
from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError

# Documented request limits (docs/serving.md); each violation is a 4xx JSON answer.
MAX_TEXT_CHARS = 2000
MAX_TEXTS = 64
MAX_BODY_BYTES = 1024 * 1024
API_KEY_ENV = "LIT_SERVER_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("serve")
    p.add_argument("--model", required=True, help="export folder from `python -m emotions_pl export`")
    p.add_argument(
        "--variant",
        choices=sorted(VARIANT_FILES),
        default="fp32",
        help="fp32 (PyTorch), onnx or int8 (ONNX Runtime); onnx/int8 must have been exported",
    )
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="requests per model batch")
    p.add_argument("--batch-timeout", type=float, default=0.01, help="seconds to wait for a batch to fill")
    p.add_argument(
        "--workers-per-device", type=int, default=1, help="inference processes (CPU threads are split)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads per inference process "
        "(default: the cores minus one for the HTTP process, split between workers)",
    )
    p.add_argument(
        "--timeout", type=float, default=30, help="seconds a request may wait in the queue (then 504)"
    )
    p.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        help="environment variable holding the API key; when it is set, X-API-Key is required",
    )
    p.add_argument("--log-dir", help="write per-text prediction records (rotating jsonl) here")
    p.add_argument("--log-text", action="store_true", help="include the raw text in the prediction log")
    p.add_argument("--fast-queue", action="store_true", help="ZeroMQ between HTTP and inference processes")
    p.add_argument(
        "--log-level", default="warning", help="uvicorn/LitServe log level (info logs every request)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    if args.max_batch_size < 1 or args.workers_per_device < 1 or args.batch_timeout < 0:
        raise UserError("--max-batch-size and --workers-per-device must be >= 1, --batch-timeout >= 0.")
    if not os.path.isdir(args.model):
        raise UserError(f"--model {args.model}: no such export folder.")
    from emotions_pl.serve.server import serve

    return serve(args)
