"""Layer-pruning benchmark: one row per export folder and variant (fp32, int8), measured in one run on the
same test split and this machine.

    python -m scripts.bench.prune --model 6=models/emotions --model 4=models/emotions-pruned4 \
        --model 3=models/emotions-pruned3
    python -m scripts.bench.prune --smoke     # a tiny model as two rows, few calls and requests (seconds)

Columns: encoder layers, parameters, test accuracy and macro-F1 (from the folder's export_info.json when
``export --data`` scored that variant on the same test file, else computed here through the Predictor),
the bare-model throughput in chunks of 1 and its bound (``common.bare_bound``: the best texts/s over
chunk sizes, the server's threads, in a fresh process per row; the same seeded test texts for every row,
warm-up calls, then ``--repeats`` timed calls per chunk size, the median; ``--rounds`` such processes
per row, taken in turn over the rows, the median), server req/s at c=16 (``serve --variant V`` through
the benchmarks' load client, on loopback, with a bounded request count), and the speed-ups against the
reference row (``--reference``, default the first ``--model``) in the same variant. Writes JSON
(``results/bench/prune.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from emotions_pl.artifact.predictor import VARIANT_FILES, read_info
from emotions_pl.serve import options
from scripts.bench import common

VARIANTS = ("fp32", "int8")
SPEEDS = ("chunk1_texts_per_s", "bound_texts_per_s")
SMOKE = {
    "variants": ["int8"],  # fp32's bound and server are in the smoke of serve
    "repeats": 5,
    "rounds": 1,
    "requests": 16,
    "warmup": 4,
    "data": common.SAMPLE_DATA,
}


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
    """req/s at c=16 of ``serve --variant V``, single-text requests (the benchmarks' client and checks)."""
    name = f"{folder.name} {variant}"
    rows, _ = common.run_server_bench(
        name, folder, ["--variant", variant], texts, logs, [16], args.requests, args.warmup
    )
    if rows[0]["non_2xx"]:
        raise RuntimeError(f"{name}: {rows[0]['non_2xx']} non-2xx answers at c=16")
    return rows[0]["rps"]


def speedups(rows: list[dict[str, Any]], reference: str) -> None:
    """Each row's ratios to the reference row of the same variant (bound, chunk 1, server), in place."""
    for row in rows:
        ref = next((r for r in rows if r["label"] == reference and r["variant"] == row["variant"]), None)
        for key, column in (
            ("bound_texts_per_s", "x_bound"),
            ("chunk1_texts_per_s", "x_chunk1"),
            ("rps_c16", "x_rps"),
        ):
            value, base = row.get(key), (ref or {}).get(key)
            row[column] = round(value / base, 2) if value and base else None
        if ref is not None:
            row["accuracy_loss_points"] = round(100 * (ref["accuracy"] - row["accuracy"]), 2)


def floor(rows: list[dict[str, Any]], reference: str) -> list[str]:
    """Issue 19: a pruned setting >= 1.4x the reference's bare bound (batches of 32 texts, each row at its
    best chunk size) in fp32 and int8, losing <= 0.5 points of accuracy."""
    met = []
    for label in dict.fromkeys(r["label"] for r in rows if r["label"] != reference):
        mine = [r for r in rows if r["label"] == label]
        if {r["variant"] for r in mine} == set(VARIANTS) and all(
            (r["x_bound"] or 0) >= 1.4 and r.get("accuracy_loss_points", 99) <= 0.5 for r in mine
        ):
            met.append(label)
    return met


def table(rows: list[dict[str, Any]], reference: str) -> str:
    shown = [{**r, "parameters": f"{r['parameters'] / 1e6:.1f} M"} for r in rows]
    columns = {"model": "label", "layers": "layers", "variant": "variant", "parameters": "parameters"}
    columns |= {"test acc": "accuracy", "macro-F1": "f1_macro", "chunk 1 texts/s": "chunk1_texts_per_s"}
    columns |= {"bound texts/s": "bound_texts_per_s", "best chunk": "best_chunk"}
    columns |= {f"x bound vs {reference}": "x_bound", "req/s c=16": "rps_c16", "x req/s": "x_rps"}
    formats = {"accuracy": ".4f", "f1_macro": ".4f", "x_bound": ".2f", "rps_c16": ".1f", "x_rps": ".2f"}
    return common.table(shown, columns, formats | {k: ".1f" for k in SPEEDS})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        action="append",
        help="LABEL=EXPORT_DIR (repeat), LABEL e.g. 6; --smoke: a tiny one, twice",
    )
    p.add_argument("--reference", help="the label the speed-ups compare with (default: the first --model)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=50, help="timed calls per chunk size (median)")
    p.add_argument("--rounds", type=int, default=3, help="bare measurements per row, interleaved (median)")
    p.add_argument("--requests", type=int, default=400, help="server requests at c=16 per row (0: skip)")
    p.add_argument("--warmup", type=int, default=40, help="server warm-up requests")
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="test jsonl (text, label)")
    p.add_argument("--output", type=Path, help="default results/bench/prune.json")
    args = common.parse(p, SMOKE)
    if not args.model and not args.smoke:
        p.error("--model is required (or --smoke)")
    output = common.output_path(args.output, "prune", args.smoke)
    data = args.data if args.data.is_file() else common.SAMPLE_DATA
    texts = [r["text"] for r in common.read_jsonl(data)]
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        if not args.model:  # the smoke's reference and a copy of it: every column, speed-ups near 1
            folder = common.smoke_export(Path(tmp))
            args.model = [f"ref={folder}", f"copy={folder}"]
        report = run(args, data, texts, Path(tmp))
    common.write_json(output, report)
    print()
    print(table(report["rows"], report["reference"]))
    print(
        f"\nfloor (>= 1.4x the bare bound in fp32 and int8, <= 0.5 points of accuracy lost vs "
        f"{report['reference']}): {', '.join(report['floor_met_by']) or 'not met'}"
    )
    print(f"{common.BOUND_NOTE}.")
    return 0


def run(args: argparse.Namespace, data: Path, texts: list[str], logs: Path) -> dict[str, Any]:
    models = []
    for spec in args.model:
        label, folder = parse_model(spec)
        layers, parameters = layers_and_parameters(folder)
        models.append((label or str(layers), folder, layers, parameters, read_info(folder)))
    reference = args.reference or models[0][0]
    machine = common.machine()
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
            threads = options.default_threads(machine["cpus"], 1, row["variant"])
            bound = common.bare_bound(row["path"], row["variant"], threads, data, max_calls=args.repeats)
            row.setdefault("rounds", []).append(bound)
    for row in rows:
        row["threads"] = row["rounds"][0]["threads"]
        row["chunk1_texts_per_s"] = statistics.median(r["chunk_texts_per_s"]["1"] for r in row["rounds"])
        row["bound_texts_per_s"] = statistics.median(r["bound_texts_per_s"] for r in row["rounds"])
        row["best_chunk"] = statistics.mode(r["best_chunk"] for r in row["rounds"])
        if args.requests:
            row["rps_c16"] = server_rps(Path(row["path"]), row["variant"], texts, args, logs)
        print(
            f"{row['label']:>4} {row['variant']:<5} acc {row['accuracy']:.4f}  "
            f"chunk 1 {row['chunk1_texts_per_s']:>7.1f}  bound {row['bound_texts_per_s']:>7.1f} texts/s  "
            f"c=16 {row.get('rps_c16', '-')} req/s",
            flush=True,
        )
    speedups(rows, reference)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": args.smoke,
        "machine": machine,
        "client_note": common.CLIENT_NOTE.format(cpus=machine["cpus"]),
        "bound_note": common.BOUND_NOTE,
        "data": {"path": str(data.resolve()), "n": len(texts)},
        "settings": common.settings(args),
        "reference": reference,
        "rows": rows,
        "floor_met_by": floor(rows, reference),
    }


if __name__ == "__main__":
    sys.exit(main())
