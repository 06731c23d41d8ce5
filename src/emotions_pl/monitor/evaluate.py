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
    from emotions_pl.artifact import scoring

    report = metrics.report(probs, targets, labels)
    values, table = report["metrics"], report["per_class"]
    # the headline metrics' 95 % intervals beside them (scalar keys: `dvc metrics diff` shows them)
    found = scoring.quality(probs.argmax(1), targets, labels)["intervals"]
    for metric in ("acc", "f1_macro"):
        values |= {f"test/{metric}_ci_{end}": found[metric][f"ci_{end}"] for end in ("low", "high")}
    for label, entry in found["f1"].items():
        values |= {f"test/f1/{label}_ci_{end}": entry[f"ci_{end}"] for end in ("low", "high")}
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


CALIBRATION_KEYS = (
    "ece",
    "ece_low",
    "ece_high",
    "ece_floor_median",
    "ece_floor_p95",
    "ece_mass",
    "ece_mass_floor_p95",
    "mce",
    "brier",
    "nll",
    "acc",
)
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


def evaluate_export(model_dir: Path, data: Path, output: Path, batch_size: int = 64) -> dict[str, float]:
    """Score every variant of an export folder (CPU, as the server runs it) and write the reports."""
    import numpy as np

    from emotions_pl import metrics, plots, quality, tables
    from emotions_pl.artifact import scoring
    from emotions_pl.artifact.calibration import Affine
    from emotions_pl.artifact.predictor import Predictor, read_info
    from emotions_pl.schema import SPLITS
    from emotions_pl.train import summary

    if not data.exists():  # before the slow part
        raise UserError(f"--data {data}: no such data file or folder.")
    info = read_info(model_dir)
    labels = list(info["labels"])
    record = info.get("calibration") or {}
    affine = Affine.from_record(record, len(labels))
    texts, targets = tables.read_split(data, labels)
    targets = np.asarray(targets)
    validation = None  # the calibrator's own split: its ECE against its floor tells shift from misfit
    if data.is_dir():
        found = tables.read_split(tables.find_split_file(data, "validation"), labels, "validation")
        validation = (found[0], np.asarray(found[1]))

    scored: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    probs: dict[str, np.ndarray] = {}
    for variant in info.get("variants") or {"fp32": {}}:
        predictor = Predictor.from_folder(model_dir, variant)
        logits = predictor.predict_logits(texts, batch_size)
        if affine.keeps_argmax and not (affine.undo(logits).argmax(1) == logits.argmax(1)).all():
            raise AssertionError(f"{variant}: undoing {affine.method} scaling changed a label")
        scored[variant] = scoring.variant(logits, texts, targets, labels, affine)
        if validation is not None:  # the split the calibrator was fitted on: before and after it
            val_logits = predictor.predict_logits(validation[0], batch_size)
            for stage, z in (("validation_before", affine.undo(val_logits)), ("validation", val_logits)):
                found = metrics.calibration(metrics.softmax64(z), validation[1])
                scored[variant]["calibration"][stage] = scoring.rounded(found)
        stages = {"before": affine.undo(logits), "after": logits}
        curves[variant] = {
            k: metrics.reliability_bins(metrics.softmax64(z), targets) for k, z in stages.items()
        }
        probs[variant] = metrics.softmax64(logits)
        atomic_write_text(output / "reliability" / f"{variant}.csv", reliability_csv(curves[variant]))

    source = (info.get("source_checkpoint") or {}).get("path")
    run = summary.read(summary.find(Path(source))) if source else {}
    main = "fp32" if "fp32" in probs else next(iter(probs))
    values = write_report(output, probs[main], targets, labels, run)
    for variant, s in scored.items():
        values |= scoring.metric_keys(variant, s)
        for stage, c in s["calibration"].items():
            values |= {f"calibration/{variant}/{stage}/{k}": c[k] for k in CALIBRATION_KEYS}
    if affine.temperature is not None:
        values["calibration/temperature"] = round(affine.temperature, 6)

    rows = scored[main]["slices"]
    for r in rows[1:]:  # "all" is test/acc and test/f1_macro already
        values |= {f"slices/{r['slice']}/{k}": r[k] for k in ("n", "acc", "f1_macro") if r[k] is not None}

    findings: dict[str, Any] = {"note": f"--data {data} is one file: no other splits to compare"}
    if data.is_dir():
        splits = {split: tables.read_split(data, labels, split) for split in SPLITS}
        findings = quality.report(splits, labels)
        others = [t for split in SPLITS if split != "test" for t in splits[split][0]]
        kept = ~quality.leaked(texts, others)
        clean = metrics.scores(probs[main].argmax(1)[kept], targets[kept], len(labels))
        findings["test_without_cross_split"] = {
            "n": int(kept.sum()),
            "removed": int((~kept).sum()),
            "acc": round(clean["acc"], 6),
            "f1_macro": round(clean["f1_macro"], 6),
        }
        values |= {f"test_unleaked/{k}": v for k, v in findings["test_without_cross_split"].items()}

    atomic_write_text(output / "metrics.json", json.dumps(values, indent=2) + "\n")
    calibrations = {v: s["calibration"] for v, s in scored.items()}
    calibration_record = {"calibrator": record, "variants": calibrations}
    atomic_write_text(output / "calibration.json", json.dumps(calibration_record, indent=2) + "\n")
    atomic_write_text(output / "calibration.md", scoring.calibration_markdown(record, calibrations))
    intervals = {v: {k: s[k] for k in ("accuracy", "f1_macro", "intervals")} for v, s in scored.items()}
    atomic_write_text(output / "intervals.json", json.dumps(intervals, indent=2) + "\n")
    atomic_write_text(output / "intervals.md", scoring.quality_markdown(scored))
    legend = {
        v: {f"{k} (ECE {scored[v]['calibration'][k]['ece']:.3f})": bins for k, bins in stages.items()}
        for v, stages in curves.items()
    }
    title = f"test reliability, {affine.method} scaling (n={len(targets)})"
    atomic_write_bytes(output / "reliability.png", plots.png_bytes(plots.reliability_figure(legend, title)))
    atomic_write_text(output / "slices.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(output / "slices.md", scoring.slices_markdown({main: rows}))
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
    headline = ", ".join(
        f"{k}={values[k]:.4f} [{values[k + '_ci_low']:.4f}, {values[k + '_ci_high']:.4f}]"
        for k in ("test/acc", "test/f1_macro")
    )
    headline += f", test/loss={values['test/loss']:.4f}"
    ece = [k.split("/")[1:3] for k in values if k.startswith("calibration/") and k.endswith("/ece")]
    if ece:  # e.g. "ECE fp32 before 0.0412, fp32 after 0.0095"
        shown = (f"{v} {stage} {values[f'calibration/{v}/{stage}/ece']:.4f}" for v, stage in ece)
        headline += ", ECE " + ", ".join(shown)
    print(f"evaluate: {args.model or args.ckpt} on {args.data}: {headline}; reports in {args.output}")
    return 0
