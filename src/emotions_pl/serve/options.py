"""``python -m emotions_pl serve``: its flags and defaults, parsed before LitServe is imported.

``run`` checks the flags, turns them into a frozen ``Settings`` (``make_settings``) and hands it to
``server.serve``; ``--help`` and a bad flag cost no import of the server stack. The defaults that depend
on the machine or the export folder (the variant, the inference threads) are chosen here, by
``choose_variant`` and ``default_threads``, and printed at start. The request limits and the tuning
constants are ``settings``'s (the server's modules read them there), and importable from here too.
"""

import argparse
import os
from pathlib import Path
from typing import Any

from emotions_pl.artifact.explain import DEFAULT_STEPS, MAX_STEPS
from emotions_pl.artifact.predictor import VARIANT_FILES, read_info
from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.schema import MAX_ACCURACY_LOSS_POINTS
from emotions_pl.serve.settings import (  # noqa: F401 (the limits and tuning, importable from here too)
    API_KEY_ENV,
    BATCH_CHUNK,
    BODY_DEADLINE_S,
    DISCARD_BYTES,
    EXPLAIN_QUEUE,
    MAX_BODY_BYTES,
    MAX_EXPLAIN_TEXTS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
    OPENMP_ENV,
    Settings,
    set_openmp_waiting,
)

AUTO = "auto"
# Fastest first, as measured on CPU (docs/serving.md, "Which faster variant"): ONNX Runtime int8, ONNX
# Runtime fp32, PyTorch fp32.
SPEED_ORDER = ("int8", "onnx", "fp32")


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


def make_settings(args: argparse.Namespace) -> Settings:
    """The flags as the server's frozen ``Settings``, with ``--variant auto`` and the default threads
    chosen; its ``said`` are the sentences that say what was chosen and why."""
    info = read_info(args.model)
    said = []
    if args.variant == AUTO:
        variant, variant_reason = choose_variant(args.model, info)
        said.append(f"variant {variant} (auto): {variant_reason}")
    else:
        variant, variant_reason = args.variant, "chosen with --variant"
    if args.threads:
        threads = args.threads
    else:
        cores = available_cores()
        threads = default_threads(cores, args.workers_per_device, variant)
        said.append(
            f"threads {threads} per inference worker (auto: {cores} cores, "
            f"{args.workers_per_device} worker{'s' if args.workers_per_device > 1 else ''})"
        )
    return Settings(
        model=args.model,
        variant=variant,
        variant_reason=variant_reason,
        threads=threads,
        said=tuple(said),
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        workers_per_device=args.workers_per_device,
        timeout=args.timeout,
        api_key=(os.environ.get(args.api_key_env) if args.api_key_env else None) or None,
        log_dir=args.log_dir,
        log_text=args.log_text,
        explain_queue=args.explain_queue,
        explain_steps=args.explain_steps,
        fast_queue=args.fast_queue,
        log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    if args.max_batch_size < 1 or args.workers_per_device < 1 or args.batch_timeout < 0:
        raise UserError("--max-batch-size and --workers-per-device must be >= 1, --batch-timeout >= 0.")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1.")
    if args.explain_queue < 1 or not 1 <= args.explain_steps <= MAX_STEPS:
        raise UserError(f"--explain-queue must be >= 1, --explain-steps between 1 and {MAX_STEPS}.")
    if not os.path.isdir(args.model):
        raise UserError(f"--model {args.model}: no such export folder.")
    settings = make_settings(args)
    from emotions_pl.serve.server import serve  # here, not at the top: --help imports no LitServe

    return serve(settings)
