"""``python -m emotions_pl evaluate``: test metrics, per-class table, confusion matrix and training curves.

The DVC ``evaluate`` stage. It scores a checkpoint on the test split of a data folder with the
tokenizer and ``max_length`` the checkpoint was trained with, and turns the run summary's curves
into plain CSV, writing files DVC understands: ``metrics.json`` (``dvc metrics``), and CSV tables
plus a PNG (``dvc plots``). Every file is written atomically, so a failed run never leaves half a report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write_bytes, atomic_write_text

# Run-summary fields turned into curve columns (DVC plots address fields by name; no slashes there).
VAL_CURVE = {"val/loss": "val_loss", "val/acc": "val_acc", "val/f1_macro": "val_f1_macro"}


def markdown_table(table: dict[str, list[Any]]) -> str:
    columns = list(table)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in zip(*table.values(), strict=True):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = [",".join(columns)]
    lines += [",".join("" if r.get(c) is None else str(r[c]) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def training_curves(run: dict[str, Any]) -> tuple[str, str]:
    """Training loss per logged step and validation metrics per epoch, from the run summary."""
    train = [{"step": step, "train_loss": loss} for step, loss in run.get("train_loss", [])]
    val = [
        {"epoch": e["epoch"], "step": e["step"], **{VAL_CURVE[k]: e[k] for k in VAL_CURVE if k in e}}
        for e in run.get("epochs", [])
    ]
    return csv_text(train, ["step", "train_loss"]), csv_text(val, ["epoch", "step", *VAL_CURVE.values()])


def evaluate(
    ckpt: Path, data: Path, output: Path, batch_size: int = 64, device: str = "auto"
) -> dict[str, float]:
    import numpy as np
    import torch

    from emotions_pl import metrics, plots
    from emotions_pl.artifact import checkpoint
    from emotions_pl.tables import read_split

    if not data.exists():  # before the slow part
        raise UserError(f"--data {data}: no such data file or folder.")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    fit = checkpoint.load(ckpt, device)
    if not fit.run:
        raise UserError(f"--ckpt {ckpt}: no run.json beside it or one folder up; it comes from `fit`.")
    texts, targets = read_split(data, fit.labels)
    probs = fit.predictor(device).predict_proba(texts, batch_size).astype(np.float64)
    report = metrics.report(probs, targets, fit.labels)
    values, table = report["metrics"], report["per_class"]

    names = np.array(fit.labels)
    predictions = [
        {"actual": a, "predicted": p, "score": round(float(s), 6)}
        for a, p, s in zip(names[targets], names[probs.argmax(1)], probs.max(1), strict=True)
    ]
    rows = [
        {k: round(v, 6) if isinstance(v, float) else v for k, v in zip(table, row, strict=True)}
        for row in zip(*table.values(), strict=True)
    ]
    atomic_write_text(output / "metrics.json", json.dumps(values, indent=2) + "\n")
    atomic_write_text(output / "per_class.csv", csv_text(rows, list(table)))
    atomic_write_text(output / "per_class.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(output / "per_class.md", markdown_table(table))
    atomic_write_text(output / "predictions.csv", csv_text(predictions, ["actual", "predicted", "score"]))
    title = f"test: macro F1 {values['test/f1_macro']:.3f} (n={len(targets)})"
    figure = plots.confusion_figure(report["confusion"].numpy(), fit.labels, title)
    atomic_write_bytes(output / "confusion_matrix.png", plots.png_bytes(figure))
    train_csv, val_csv = training_curves(fit.run)
    atomic_write_text(output / "curves" / "train.csv", train_csv)
    atomic_write_text(output / "curves" / "val.csv", val_csv)
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("evaluate")
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `emotions_pl fit`")
    parser.add_argument("--data", required=True, type=Path, help="folder with a test split file")
    parser.add_argument("--output", required=True, type=Path, help="folder for the reports")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser


def run(args: argparse.Namespace) -> int:
    values = evaluate(args.ckpt, args.data, args.output, args.batch_size, args.device)
    headline = ", ".join(f"{k}={values[k]:.4f}" for k in ("test/acc", "test/f1_macro", "test/loss"))
    print(f"evaluate: {args.ckpt} on {args.data}: {headline}; reports in {args.output}")
    return 0
