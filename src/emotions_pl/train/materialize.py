"""``python -m emotions_pl data``: copy the data set from its source into one folder of one format.

The DVC ``data`` stage. Whatever the source (a hub id, a local folder of jsonl/csv/parquet files, a
``package:`` folder), the pipeline then reads the same validated ``{split}.jsonl`` files with integer
labels, so every later stage, and DVC's hash of them, sees exactly what training saw. Reading goes
through ``tables.load_splits``: bad rows fail here with the same message the trainer would give.
The report (counts per split and label, text lengths, and the data-quality findings of ``quality.py``:
texts in several splits, conflicting labels, near-duplicates, with a few examples) is small enough to read.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from emotions_pl import quality, sources
from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write_text, publish_dir, staging_dir
from emotions_pl.schema import LABELS, SPLITS
from emotions_pl.tables import load_splits


def length_stats(values: pd.Series) -> dict[str, float]:
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 2),
        "median": float(values.median()),
        "p95": round(float(values.quantile(0.95)), 2),
        "max": int(values.max()),
    }


def data_report(tables: dict[str, pd.DataFrame], label_names: Sequence[str]) -> dict[str, Any]:
    """Rows and label counts per split, text lengths (characters, words), texts shared with train, and
    the data-quality findings (``quality.report``)."""
    report: dict[str, Any] = {}
    for split, frame in tables.items():
        counts = frame["label"].value_counts()
        report[split] = {
            "rows": len(frame),
            "labels": {name: int(counts.get(i, 0)) for i, name in enumerate(label_names)},
            "chars": length_stats(frame["text"].str.len()),
            "words": length_stats(frame["text"].str.split().str.len()),
        }
    train = set(tables["train"]["text"])
    report["overlap"] = {
        f"{split}_in_train": int(tables[split]["text"].isin(train).sum()) for split in SPLITS[1:]
    }
    splits = {split: (frame["text"].tolist(), frame["label"].tolist()) for split, frame in tables.items()}
    report["quality"] = quality.report(splits, label_names)
    return report


def write_jsonl(frame: pd.DataFrame, path: Path) -> None:
    """One ``{"text", "label"}`` object per line in source order: stable bytes, so a stable DVC hash."""
    with path.open("w", encoding="utf-8") as f:
        for text, label in zip(frame["text"], frame["label"], strict=True):
            f.write(json.dumps({"text": text, "label": int(label)}, ensure_ascii=False) + "\n")


def write_splits(tables: dict[str, pd.DataFrame], output: Path, fmt: str) -> None:
    """Write all splits into a folder beside ``output`` and swap it in, never half a data set."""
    tmp = staging_dir(output)
    try:
        for split, frame in tables.items():
            if fmt == "jsonl":
                write_jsonl(frame, tmp / f"{split}.jsonl")
            else:
                frame.to_parquet(tmp / f"{split}.parquet", index=False)
        publish_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(source: str, output: Path, fmt: str = "jsonl", report: Path | None = None) -> dict[str, Any]:
    resolved = Path(sources.resolve(source))
    if resolved.exists() and resolved.resolve() == output.resolve():
        raise UserError(f"--output {output} is the source folder itself; choose another folder.")
    tables = load_splits(source, LABELS)
    summary = data_report(tables, LABELS)
    write_splits(tables, output, fmt)
    if report is not None:
        atomic_write_text(report, json.dumps(summary, indent=2) + "\n")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("data")
    parser.add_argument(
        "--source", required=True, help="hub id (dair-ai/emotion), local folder, or package:<module>/<folder>"
    )
    parser.add_argument("--output", required=True, type=Path, help="folder for train/validation/test")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--report", type=Path, help="write the data report (JSON) here")
    return parser


def run(args: argparse.Namespace) -> int:
    summary = materialize(args.source, args.output, args.format, args.report)
    rows = ", ".join(f"{split} {summary[split]['rows']}" for split in SPLITS)
    found = summary["quality"]
    shared = sum(pair["texts"] for pair in found["cross_split"].values())
    print(
        f"data: {args.source} -> {args.output} ({args.format}; {rows}); {shared} texts in two splits, "
        f"{found['conflicting_labels']['texts']} with conflicting labels, "
        f"{found['near_duplicates']['groups']} near-duplicate groups"
        + (f"; report {args.report}" if args.report else "")
    )
    return 0
