"""Layer-pruning benchmark: one row per export folder and variant (fp32, int8), measured in one run on the
same test split and this machine.

    python scripts/bench_prune.py --model 6=models/emotions --model 4=models/emotions-pruned4 \
        --model 3=models/emotions-pruned3 --output bench/prune.json

Columns: encoder layers, parameters, test accuracy and macro-F1 (from the folder's export_info.json when
``export --data`` scored that variant on the same test file, else computed here through the Predictor),
bare-model throughput at batch 1 and batch 32 (``Predictor.from_folder``, tokenize + model, the server's
threads and chunking, in a fresh process per row; the same seeded test texts for every row, a warm-up,
then ``--repeats`` timed batches, the median; ``--rounds`` such processes per row, taken in turn over
the rows, the median), server req/s at c=16 (``serve --variant V`` through
``bench_serve.py``'s load client, on loopback, with a bounded request count), and the speed-ups against
the reference row (``--reference``, default the first ``--model``) in the same variant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import bench_serve  # noqa: E402  (puts src/ and tests/ on sys.path)
from emotions_pl.artifact.predictor import VARIANT_FILES, read_info  # noqa: E402
from emotions_pl.serve import options  # noqa: E402

REPO = bench_serve.REPO
VARIANTS = ("fp32", "int8")
BATCHES = (1, 32)
WARMUP_BATCHES = 3


def parse_model(spec: str) -> tuple[str | None, Path]:
    """``LABEL=DIR`` or ``DIR`` (the label is then the folder's layer count)."""
    label, sep, path = spec.partition("=")
    return (label, Path(path)) if sep else (None, Path(spec))


def layers_and_parameters(folder: Path) -> tuple[int, int]:
    """Encoder layers (config.json) and parameters (the safetensors tensors)."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    with safe_open(folder / VARIANT_FILES["fp32"], "pt") as f:
        parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return int(layers), parameters


def bare_worker(model: Path, variant: str, threads: int, texts: list[str], repeats: int) -> dict[str, Any]:
    """Median texts/s over ``repeats`` timed batches per batch size, as the server's worker runs them."""
    from emotions_pl.artifact.predictor import Predictor

    options.set_openmp_waiting()  # as the server does (before torch starts OpenMP)
    predictor = Predictor.from_folder(model, variant, threads, spin_wait=False)
    chunk = options.BATCH_CHUNK[variant]
    out: dict[str, Any] = {"variant": variant, "threads": threads, "repeats": repeats}
    for batch in BATCHES:
        rng = random.Random(batch)  # the same texts for every folder and variant
        batches = [rng.sample(texts, batch) for _ in range(WARMUP_BATCHES + repeats)]
        seconds = []
        for i, texts_in in enumerate(batches):
            start = time.perf_counter()
            predictor.run(predictor.encode(texts_in, chunk))
            if i >= WARMUP_BATCHES:
                seconds.append(time.perf_counter() - start)
        out[f"batch{batch}_texts_per_s"] = round(batch / statistics.median(seconds), 1)
    return out


def bare(folder: Path, variant: str, threads: int, data: Path, repeats: int) -> dict[str, Any]:
    proc = subprocess.run(
        [
            *(sys.executable, __file__, "--bare-worker", "--model", str(folder), "--variant", variant),
            *("--threads", str(threads), "--data", str(data), "--repeats", str(repeats)),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_scores(folder: Path, variant: str, info: dict[str, Any], data: Path) -> dict[str, Any]:
    """Accuracy and macro-F1 on ``data``: export_info's when it scored this variant on the same file."""
    from emotions_pl import metrics, tables
    from emotions_pl.artifact.predictor import Predictor
    from emotions_pl.files import sha256

    digest = sha256(data)
    recorded = (info.get("variants", {}).get(variant) or {}).get("test") or {}
    if recorded.get("sha256") == digest:
        return {"accuracy": recorded["accuracy"], "f1_macro": recorded["f1_macro"], "from": "export_info"}
    texts, targets = tables.read_split(data, info["labels"], "test")
    predicted = Predictor.from_folder(folder, variant).predict_proba(texts).argmax(-1)
    values = metrics.scores(predicted, targets, len(info["labels"]))
    return {"accuracy": round(values["acc"], 6), "f1_macro": round(values["f1_macro"], 6), "from": "computed"}


def server_rps(folder: Path, variant: str, texts: list[str], args: argparse.Namespace, logs: Path) -> float:
    """req/s at c=16 of ``serve --variant V``, single-text requests (bench_serve's client and checks)."""
    sub = argparse.Namespace(model=str(folder), warmup=args.warmup, requests=args.requests, concurrency=[16])
    name = f"{folder.name} {variant}"
    rows, _ = bench_serve.run_server_bench(name, ["--variant", variant], texts, sub, logs)
    if rows[0]["non_2xx"]:
        raise RuntimeError(f"{name}: {rows[0]['non_2xx']} non-2xx answers at c=16")
    return rows[0]["rps"]


def speedups(rows: list[dict[str, Any]], reference: str) -> None:
    """Each row's ratios to the reference row of the same variant (b32, b1, server), in place."""
    for row in rows:
        ref = next((r for r in rows if r["label"] == reference and r["variant"] == row["variant"]), None)
        for key, column in (
            ("batch32_texts_per_s", "x_b32"),
            ("batch1_texts_per_s", "x_b1"),
            ("rps_c16", "x_rps"),
        ):
            value, base = row.get(key), (ref or {}).get(key)
            row[column] = round(value / base, 2) if value and base else None
        if ref is not None:
            row["accuracy_loss_points"] = round(100 * (ref["accuracy"] - row["accuracy"]), 2)


def floor(rows: list[dict[str, Any]], reference: str) -> list[str]:
    """Issue 19: a pruned setting >= 1.4x at batch 32 in fp32 and int8, losing <= 0.5 points of accuracy."""
    met = []
    for label in dict.fromkeys(r["label"] for r in rows if r["label"] != reference):
        mine = [r for r in rows if r["label"] == label]
        if {r["variant"] for r in mine} == set(VARIANTS) and all(
            (r["x_b32"] or 0) >= 1.4 and r.get("accuracy_loss_points", 99) <= 0.5 for r in mine
        ):
            met.append(label)
    return met


def table(rows: list[dict[str, Any]], reference: str) -> str:
    lines = [
        f"| model | layers | variant | parameters | test acc | macro-F1 | b1 texts/s | b32 texts/s | "
        f"x b32 vs {reference} | req/s c=16 | x req/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for r in rows:
        lines.append(
            f"| {r['label']} | {r['layers']} | {r['variant']} | {r['parameters'] / 1e6:.1f} M | "
            f"{r['accuracy']:.4f} | {r['f1_macro']:.4f} | {r['batch1_texts_per_s']:.1f} | "
            f"{r['batch32_texts_per_s']:.1f} | {num(r['x_b32'], '.2f')} | {num(r.get('rps_c16'), '.1f')} | "
            f"{num(r['x_rps'], '.2f')} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=EXPORT_DIR (repeat); LABEL: e.g. 6")
    p.add_argument("--reference", help="the label the speed-ups compare with (default: the first --model)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=50, help="timed batches per batch size (median)")
    p.add_argument("--rounds", type=int, default=3, help="bare measurements per row, interleaved (median)")
    p.add_argument("--requests", type=int, default=400, help="server requests at c=16 per row (0: skip)")
    p.add_argument("--warmup", type=int, default=40, help="server warm-up requests")
    p.add_argument("--data", type=Path, default=bench_serve.DEFAULT_DATA, help="test jsonl (text, label)")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "prune.json")
    p.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data if args.data.is_file() else bench_serve.SAMPLE_DATA
    texts = [r["text"] for r in bench_serve.read_jsonl(data)]
    if args.bare_worker:
        print(
            json.dumps(
                bare_worker(parse_model(args.model[0])[1], args.variant, args.threads, texts, args.repeats)
            )
        )
        return 0

    models = []
    for spec in args.model:
        label, folder = parse_model(spec)
        layers, parameters = layers_and_parameters(folder)
        models.append((label or str(layers), folder, layers, parameters, read_info(folder)))
    reference = args.reference or models[0][0]
    cores = options.available_cores()
    rows: list[dict[str, Any]] = []
    for label, folder, layers, parameters, info in models:
        for variant in args.variants:
            if not (folder / VARIANT_FILES[variant]).is_file():
                print(f"{label}: no {variant} variant in {folder}; skipped", flush=True)
                continue
            row: dict[str, Any] = {"label": label, "path": str(folder), "layers": layers, "variant": variant}
            row |= {"parameters": parameters, "pruning": info.get("pruning")}
            rows.append(row | test_scores(folder, variant, info, data))
    # Rounds go over every row in turn, so a burst of load on a shared machine hits all rows alike.
    for _ in range(args.rounds):
        for row in rows:
            threads = options.default_threads(cores, 1, row["variant"])
            row.setdefault("rounds", []).append(
                bare(Path(row["path"]), row["variant"], threads, data, args.repeats)
            )
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        for row in rows:
            row["threads"] = row["rounds"][0]["threads"]
            for batch in BATCHES:
                key = f"batch{batch}_texts_per_s"
                row[key] = statistics.median(r[key] for r in row["rounds"])
            if args.requests:
                row["rps_c16"] = server_rps(Path(row["path"]), row["variant"], texts, args, Path(tmp))
            print(
                f"{row['label']:>4} {row['variant']:<5} acc {row['accuracy']:.4f}  "
                f"b1 {row['batch1_texts_per_s']:>7.1f}  b32 {row['batch32_texts_per_s']:>7.1f} texts/s  "
                f"c=16 {row.get('rps_c16', '-')} req/s",
                flush=True,
            )
    speedups(rows, reference)
    met = floor(rows, reference)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()},
        "load_average_at_start": os.getloadavg(),
        "client_note": bench_serve.CLIENT_NOTE.format(cpus=cores),
        "data": {"path": str(data.resolve()), "n": len(texts)},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "reference": reference,
        "rows": rows,
        "floor_met_by": met,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(rows, reference))
    print(
        f"\nfloor (>= 1.4x at batch 32 in fp32 and int8, <= 0.5 points of accuracy lost vs {reference}): "
        f"{', '.join(met) or 'not met'}"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
