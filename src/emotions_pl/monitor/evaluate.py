"""``python -m emotions_pl evaluate``: test metrics, per-class table, confusion matrix and training curves.

The DVC ``evaluate`` stage. It scores a checkpoint (``--ckpt``) or an export folder (``--model``) on
the test split of a data folder with the tokenizer and ``max_length`` the model was trained with, and
turns the run summary's curves into plain CSV, writing files DVC understands: ``metrics.json``
(``dvc metrics``), and CSV tables plus a PNG (``dvc plots``). Every file is written atomically, so a
failed run never leaves half a report.

An export folder adds, for each of its variants, calibration before and after its temperature
(ECE / MCE / Brier / NLL and a reliability diagram), and for fp32 the per-slice table (``slices.py``),
the data-quality findings of the data folder (``quality.py``) and the test metrics without the test
texts that also occur in train or validation.
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


def write_report(
    output: Path, probs: Any, targets: Any, labels: list[str], run: dict[str, Any]
) -> dict[str, float]:
    """What both inputs write: metrics.json, the per-class table, predictions, confusion matrix, curves."""
    import numpy as np

    from emotions_pl import metrics, plots

    report = metrics.report(probs, targets, labels)
    values, table = report["metrics"], report["per_class"]
    names = np.array(labels)
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
    figure = plots.confusion_figure(report["confusion"].numpy(), labels, title)
    atomic_write_bytes(output / "confusion_matrix.png", plots.png_bytes(figure))
    if run:
        train_csv, val_csv = training_curves(run)
        atomic_write_text(output / "curves" / "train.csv", train_csv)
        atomic_write_text(output / "curves" / "val.csv", val_csv)
    return values


def evaluate(
    ckpt: Path, data: Path, output: Path, batch_size: int = 64, device: str = "auto"
) -> dict[str, float]:
    import numpy as np
    import torch

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
    return write_report(output, probs, np.asarray(targets), fit.labels, fit.run)


CALIBRATION_KEYS = ("ece", "ece_low", "ece_high", "mce", "brier", "nll", "acc")
RELIABILITY_COLUMNS = ["bin", "bin_mid", "ideal"] + [
    f"{field}_{stage}" for stage in ("before", "after") for field in ("count", "confidence", "accuracy")
]


def reliability_csv(stages: dict[str, list[dict[str, Any]]]) -> str:
    """The reliability diagram's data, one row per bin: the bin's middle (x, and the ``ideal``
    accuracy), then size, mean confidence and accuracy before and after scaling (empty: no texts)."""
    rows = []
    for before, after in zip(stages["before"], stages["after"], strict=True):
        mid = round((before["lower"] + before["upper"]) / 2, 6)
        row: dict[str, Any] = {"bin": before["bin"], "bin_mid": mid, "ideal": mid}
        for stage, b in (("before", before), ("after", after)):
            row[f"count_{stage}"] = b["count"]
            for field in ("confidence", "accuracy"):
                row[f"{field}_{stage}"] = None if b[field] is None else round(b[field], 6)
        rows.append(row)
    return csv_text(rows, RELIABILITY_COLUMNS)


def calibration_markdown(temperature: float, scored: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        f"Temperature T = {temperature:.4f} (1: not scaled). Test split; before = raw softmax "
        "(the exported logits x T), after = as exported. ECE over 15 equal-width bins, 95 % bootstrap.",
        "",
        "| variant | stage | ECE | ECE 95 % | MCE | Brier | NLL | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, stages in scored.items():
        for stage, c in stages.items():
            lines.append(
                f"| {variant} | {stage} | {c['ece']:.4f} | [{c['ece_low']:.4f}, {c['ece_high']:.4f}] | "
                f"{c['mce']:.4f} | {c['brier']:.4f} | {c['nll']:.4f} | {c['acc']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def slices_markdown(rows: list[dict[str, Any]]) -> str:
    from emotions_pl.slices import MIN_SIZE

    lines = ["| slice | texts | accuracy | macro-F1 |", "|---|---|---|---|"]
    for r in rows:
        size = f"{r['n']} (small: < {MIN_SIZE})" if r["small"] else str(r["n"])
        acc, f1 = ("-", "-") if r["acc"] is None else (f"{r['acc']:.4f}", f"{r['f1_macro']:.4f}")
        lines.append(f"| {r['slice']}: {r['description']} | {size} | {acc} | {f1} |")
    return "\n".join(lines) + "\n"


def evaluate_export(model_dir: Path, data: Path, output: Path, batch_size: int = 64) -> dict[str, float]:
    """Score every variant of an export folder (CPU, as the server runs it) and write the reports."""
    import numpy as np

    from emotions_pl import metrics, plots, quality, slices
    from emotions_pl.artifact.predictor import Predictor, read_info
    from emotions_pl.schema import SPLITS
    from emotions_pl.tables import read_split
    from emotions_pl.train import summary

    if not data.exists():  # before the slow part
        raise UserError(f"--data {data}: no such data file or folder.")
    info = read_info(model_dir)
    labels = list(info["labels"])
    temperature = float((info.get("calibration") or {}).get("temperature", 1.0))
    texts, targets = read_split(data, labels)
    targets = np.asarray(targets)

    scored: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    probs: dict[str, np.ndarray] = {}
    for variant in info.get("variants") or {"fp32": {}}:
        logits = Predictor.from_folder(model_dir, variant).predict_logits(texts, batch_size)
        stages = {"before": metrics.softmax64(logits * temperature), "after": metrics.softmax64(logits)}
        if not (stages["before"].argmax(1) == stages["after"].argmax(1)).all():
            raise AssertionError(f"{variant}: scaling by T = {temperature} changed a label")
        scored[variant] = {k: metrics.calibration(p, targets) for k, p in stages.items()}
        curves[variant] = {k: metrics.reliability_bins(p, targets) for k, p in stages.items()}
        probs[variant] = stages["after"]
        atomic_write_text(output / "reliability" / f"{variant}.csv", reliability_csv(curves[variant]))

    source = (info.get("source_checkpoint") or {}).get("path")
    run = summary.read(summary.find(Path(source))) if source else {}
    main = "fp32" if "fp32" in probs else next(iter(probs))
    values = write_report(output, probs[main], targets, labels, run)
    for variant, stages in scored.items():
        for stage, c in stages.items():
            values |= {f"calibration/{variant}/{stage}/{k}": round(c[k], 6) for k in CALIBRATION_KEYS}
    values["calibration/temperature"] = round(temperature, 6)

    predicted = probs[main].argmax(1)
    rows = slices.table(texts, predicted, targets, len(labels))
    for r in rows[1:]:  # "all" is test/acc and test/f1_macro already
        values |= {f"slices/{r['slice']}/{k}": r[k] for k in ("n", "acc", "f1_macro") if r[k] is not None}

    findings: dict[str, Any] = {"note": f"--data {data} is one file: no other splits to compare"}
    if data.is_dir():
        splits = {split: read_split(data, labels, split) for split in SPLITS}
        findings = quality.report(splits, labels)
        others = [t for split in SPLITS if split != "test" for t in splits[split][0]]
        kept = ~quality.leaked(texts, others)
        clean = metrics.scores(predicted[kept], targets[kept], len(labels))
        findings["test_without_cross_split"] = {
            "n": int(kept.sum()),
            "removed": int((~kept).sum()),
            "acc": round(clean["acc"], 6),
            "f1_macro": round(clean["f1_macro"], 6),
        }
        values |= {f"test_unleaked/{k}": v for k, v in findings["test_without_cross_split"].items()}

    atomic_write_text(output / "metrics.json", json.dumps(values, indent=2) + "\n")
    record = {"temperature": temperature, "fitted": info.get("calibration"), "variants": scored}
    atomic_write_text(output / "calibration.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(output / "calibration.md", calibration_markdown(temperature, scored))
    legend = {
        v: {f"{k} (ECE {scored[v][k]['ece']:.3f})": bins for k, bins in stages.items()}
        for v, stages in curves.items()
    }
    figure = plots.reliability_figure(legend, f"test reliability, T = {temperature:.3f} (n={len(targets)})")
    atomic_write_bytes(output / "reliability.png", plots.png_bytes(figure))
    atomic_write_text(output / "slices.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(output / "slices.md", slices_markdown(rows))
    atomic_write_text(output / "data_quality.json", json.dumps(findings, indent=2, ensure_ascii=False) + "\n")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("evaluate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="checkpoint written by `emotions_pl fit`")
    source.add_argument(
        "--model",
        type=Path,
        help="export folder: every variant, calibration before/after its temperature, slices, data quality",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder with a test split file")
    parser.add_argument("--output", required=True, type=Path, help="folder for the reports")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="--ckpt only (--model runs on CPU)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        values = evaluate_export(args.model, args.data, args.output, args.batch_size)
    else:
        values = evaluate(args.ckpt, args.data, args.output, args.batch_size, args.device)
    headline = ", ".join(f"{k}={values[k]:.4f}" for k in ("test/acc", "test/f1_macro", "test/loss"))
    ece = [k.split("/")[1:3] for k in values if k.startswith("calibration/") and k.endswith("/ece")]
    if ece:  # e.g. "ECE fp32 before 0.0412, fp32 after 0.0095"
        shown = (f"{v} {stage} {values[f'calibration/{v}/{stage}/ece']:.4f}" for v, stage in ece)
        headline += ", ECE " + ", ".join(shown)
    print(f"evaluate: {args.model or args.ckpt} on {args.data}: {headline}; reports in {args.output}")
    return 0
