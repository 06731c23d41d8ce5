"""``python -m emotions_pl serve``: its flags, limits and defaults, parsed before LitServe is imported.

``run`` checks the flags, then starts ``server.serve``; ``--help`` and a bad flag cost no import of
the server stack. The defaults that depend on the machine or the export folder (the variant, the
inference threads) are chosen here, by ``choose_variant`` and ``default_threads``, and printed at start.
"""

import argparse
import os
from pathlib import Path
from typing import Any

from emotions_pl.artifact.explain import DEFAULT_STEPS, MAX_STEPS
from emotions_pl.artifact.predictor import VARIANT_FILES
from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError

# Documented request limits (docs/serving.md, /openapi.json); each violation is a 4xx JSON answer.
MAX_TEXT_CHARS = 2000
MAX_TEXTS = 64
# The largest request the schema allows is 64 texts of 2,000 characters; written as JSON with every
# character \u-escaped as a surrogate pair (12 bytes each) it is 1,536,203 bytes. 2 MiB holds it with room
# for formatting, so no request the schema allows is refused for its size.
MAX_BODY_BYTES = 2 * 1024 * 1024
# A body over the limit is read and discarded up to DISCARD_BYTES within BODY_DEADLINE_S, so a client that
# sends it all before reading (urllib, requests) gets a readable 413; past either bound the server
# answers and closes the connection at once.
DISCARD_BYTES = 64 * 1024 * 1024
BODY_DEADLINE_S = 10.0
API_KEY_ENV = "LIT_SERVER_API_KEY"

AUTO = "auto"
# Fastest first, as measured on CPU (docs/serving.md, "Which faster variant"): ONNX Runtime int8, ONNX
# Runtime fp32, PyTorch fp32.
SPEED_ORDER = ("int8", "onnx", "fp32")
# A faster variant is the default only when its recorded test accuracy is within this many points of fp32.
MAX_ACCURACY_LOSS_POINTS = 0.5
# The worker runs a batch's texts, sorted by length, in chunks of this many: each chunk pads only to its
# own longest text. On MiniLM-L6, 2 cores, 32 random test texts: int8 2.5x faster in chunks of 4 than as
# one padded batch (and faster than one text at a time), fp32 1.6x in chunks of 8 (docs/serving.md).
BATCH_CHUNK = {"int8": 4, "onnx": 4, "fp32": 8}
# PyTorch's OpenMP threads between operators: spin this many turns, then sleep (libgomp reads it when
# OpenMP starts). Spinning long (libgomp's default) starved the HTTP process on 2 shared cores (fp32 at
# a tenth of the speed); sleeping at once (PASSIVE alone) pays a wake-up per operator. fp32, 2 threads,
# quiet: bare batch 1 127 vs 89 texts/s, batch 32 219 vs 189; server c=16 146-155 vs 118-139 req/s.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
# /explain: a request holds 1 to MAX_EXPLAIN_TEXTS texts; at most --explain-queue requests are admitted
# (running or waiting), the next is answered 429. They run one at a time on one thread of the HTTP process.
MAX_EXPLAIN_TEXTS = 8
EXPLAIN_QUEUE = 8


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("serve")
    p.add_argument("--model", required=True, help="export folder from `python -m emotions_pl export`")
    p.add_argument(
        "--variant",
        choices=[AUTO, *sorted(VARIANT_FILES)],
        default=AUTO,
        help="fp32 (PyTorch), onnx or int8 (ONNX Runtime); auto (default): the fastest variant in the "
        f"folder whose recorded test accuracy is within {MAX_ACCURACY_LOSS_POINTS} points of fp32, else fp32",
    )
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="requests per model batch")
    p.add_argument(
        "--batch-timeout",
        type=float,
        default=0.0,
        help="seconds a batch may wait for more requests after its first one arrived (default 0: take what "
        "is queued and never wait; the queue fills while the model runs)",
    )
    p.add_argument(
        "--workers-per-device", type=int, default=1, help="inference processes (CPU threads are split)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads per inference process (default: the machine's cores split between the workers; "
        "printed at start)",
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
    p.add_argument(
        "--explain-queue",
        type=int,
        default=EXPLAIN_QUEUE,
        help=f"/explain requests admitted at once, running or waiting (default {EXPLAIN_QUEUE}); more: 429",
    )
    p.add_argument(
        "--explain-steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"integration steps per explanation (default {DEFAULT_STEPS})",
    )
    p.add_argument("--fast-queue", action="store_true", help="ZeroMQ between HTTP and inference processes")
    p.add_argument(
        "--log-level", default="warning", help="uvicorn/LitServe log level (info logs every request)"
    )
    return p


def set_openmp_waiting() -> None:
    """``OPENMP_ENV``, before torch starts OpenMP, unless the user set either variable."""
    if not any(name in os.environ for name in OPENMP_ENV):
        os.environ.update(OPENMP_ENV)


def available_cores(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPU cores this process may use: the affinity mask (a cpuset), capped by a cgroup v2 CPU quota
    (Kubernetes CPU limits, Cloud Run's vCPUs), which the mask does not show."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cgroup_cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))  # a quota of 1.5 CPUs is 2 threads
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_threads(cores: int, workers: int, variant: str) -> int:
    """Intra-op threads per inference worker: every core, split between the workers.

    Measured on the 2-core development machine (docs/serving.md, "Threads"): one worker with 2 threads
    beats 1 thread at every concurrency for int8, ONNX and fp32, although the HTTP process shares the
    cores -- it needs a core only while the model is not running. ``variant`` is taken for the record:
    no variant measured better with fewer threads.
    """
    del variant
    return max(1, cores // max(1, workers))


def _accuracy(info: dict[str, Any], variant: str) -> float | None:
    value = (info.get("variants", {}).get(variant, {}).get("test") or {}).get("accuracy")
    return float(value) if isinstance(value, int | float) else None


def choose_variant(model_dir: str | Path, info: dict[str, Any]) -> tuple[str, str]:
    """``(variant, why)`` for ``--variant auto``: the fastest exported variant whose recorded test accuracy
    is within ``MAX_ACCURACY_LOSS_POINTS`` of fp32's; fp32 when export recorded no accuracies."""
    present = [v for v in SPEED_ORDER if (Path(model_dir) / VARIANT_FILES[v]).is_file()]
    reference = _accuracy(info, "fp32")
    if reference is None:
        return "fp32", (
            "export_info.json records no test accuracy per variant (export with --data DIR to record "
            "them), so the reference variant fp32"
        )
    notes = []
    for variant in present:
        if variant == "fp32":
            break
        accuracy = _accuracy(info, variant)
        if accuracy is None:
            notes.append(f"{variant}: no recorded accuracy")
            continue
        loss = round(100 * (reference - accuracy), 6)
        if loss <= MAX_ACCURACY_LOSS_POINTS:
            skipped = f" ({'; '.join(notes)})" if notes else ""
            faster = " the fastest variant in the folder" if variant == present[0] else ""
            return variant, (
                f"{variant} is{faster} within {MAX_ACCURACY_LOSS_POINTS} points of fp32 on the recorded "
                f"test split: accuracy {accuracy:.4f} vs {reference:.4f} ({loss:+.2f} points){skipped}"
            )
        notes.append(f"{variant}: {accuracy:.4f}, {loss:.2f} points below fp32")
    why = "; ".join(notes)
    return "fp32", f"no faster variant is within {MAX_ACCURACY_LOSS_POINTS} points of fp32 ({why})"


def run(args: argparse.Namespace) -> int:
    if args.max_batch_size < 1 or args.workers_per_device < 1 or args.batch_timeout < 0:
        raise UserError("--max-batch-size and --workers-per-device must be >= 1, --batch-timeout >= 0.")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1.")
    if args.explain_queue < 1 or not 1 <= args.explain_steps <= MAX_STEPS:
        raise UserError(f"--explain-queue must be >= 1, --explain-steps between 1 and {MAX_STEPS}.")
    if not os.path.isdir(args.model):
        raise UserError(f"--model {args.model}: no such export folder.")
    from emotions_pl.serve.server import serve

    return serve(args)
