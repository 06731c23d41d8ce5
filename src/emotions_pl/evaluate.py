"""``python -m emotions_pl evaluate``: test metrics, per-class table, confusion matrix and training curves.

The DVC ``evaluate`` stage. It scores a checkpoint on the test split of a data folder with the
tokenizer and ``max_length`` the checkpoint was trained with, and turns the run's CSV logs into
plain CSV curves, writing files DVC understands: ``metrics.json`` (``dvc metrics``), and CSV tables
plus a PNG (``dvc plots``). Every file is written by rename, so a failed run never leaves half a report.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emotions_pl import sources
from emotions_pl.callbacks import atomic_write_text
from emotions_pl.data import DataValidationError, find_split_file, read_table, validate_split

# CSV-logger columns turned into curve columns (DVC plots address fields by name; no slashes there).
TRAIN_CURVE = {"train/loss": "train_loss"}
VAL_CURVE = {"val/loss": "val_loss", "val/acc": "val_acc", "val/f1_macro": "val_f1_macro"}


def load_model(ckpt: Path, device: str) -> tuple[torch.nn.Module, Any, int, list[str]]:
    """The classifier, its tokenizer and ``max_length``, all from what the checkpoint recorded."""
    from transformers import AutoTokenizer

    from emotions_pl.model import EmotionClassifier

    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt {ckpt}: no such checkpoint file.")
    data_hparams = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get(
        "datamodule_hyper_parameters"
    )
    if not data_hparams:
        raise ValueError(f"--ckpt {ckpt}: no datamodule hyper-parameters; was it saved by `emotions_pl fit`?")
    model = EmotionClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(sources.resolve(data_hparams["tokenizer_name"]))
    return model, tokenizer, int(data_hparams["max_length"]), list(model.label_names)


@torch.inference_mode()
def predict_proba(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int,
    device: str,
) -> np.ndarray:
    """Class probabilities in input order; batches are formed by length so padding stays short."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    probs = np.empty((len(texts), model.model.config.num_labels), dtype=np.float64)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        ).to(device)
        logits = model(enc["input_ids"], enc["attention_mask"]).float()
        probs[idx] = logits.softmax(-1).cpu().double().numpy()
    return probs


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str]
) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """Metrics (names as logged by ``fit``/``test``), the per-class table and the confusion matrix.

    Precision, recall and F1 of a class with no predictions or no examples count as 0, as in torchmetrics.
    """
    n = len(label_names)
    y_pred = probs.argmax(1)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    loss = -np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean()
    metrics = {
        "test/acc": tp.sum() / len(y_true),
        "test/f1_macro": f1.mean(),
        "test/precision_macro": precision.mean(),
        "test/recall_macro": recall.mean(),
        "test/f1_weighted": float((f1 * support).sum() / support.sum()),
        "test/loss": loss,
        **{f"test/f1/{name}": f1[i] for i, name in enumerate(label_names)},
    }
    table = pd.DataFrame(
        {"label": list(label_names), "precision": precision, "recall": recall, "f1": f1, "support": support}
    )
    return {k: round(float(v), 6) for k, v in metrics.items()}, table, cm


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def confusion_png(cm: np.ndarray, label_names: Sequence[str], title: str) -> bytes:
    """Counts in each cell, colour by share of the true class (so rare classes are readable too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set(
        xticks=range(len(label_names)),
        yticks=range(len(label_names)),
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.set_xticklabels(label_names, rotation=45, ha="right")
    ax.set_yticklabels(label_names)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def fit_metrics_csv(logs: Path) -> Path:
    """The newest ``version_N/metrics.csv`` under ``logs`` that holds a training run (not a test run)."""
    found = []
    for path in logs.glob("version_*/metrics.csv"):
        match = re.fullmatch(r"version_(\d+)", path.parent.name)
        if match and "train/loss" in path.open(encoding="utf-8").readline().strip().split(","):
            found.append((int(match.group(1)), path))
    if not found:
        raise FileNotFoundError(f"--logs {logs}: no version_*/metrics.csv with a train/loss column.")
    return max(found)[1]


def training_curves(metrics_csv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training loss per logged step and validation metrics per epoch, from Lightning's CSV log."""
    log = pd.read_csv(metrics_csv)
    train = log.dropna(subset=list(TRAIN_CURVE))[["step", "epoch", *TRAIN_CURVE]].rename(columns=TRAIN_CURVE)
    val_cols = [c for c in VAL_CURVE if c in log.columns]
    val = log.dropna(subset=val_cols, how="all") if val_cols else log.iloc[:0]
    val = val[["epoch", "step", *val_cols]].rename(columns=VAL_CURVE)
    return train.astype({"step": int, "epoch": int}), val.astype({"step": int, "epoch": int})


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def evaluate(
    ckpt: Path, data: Path, output: Path, logs: Path | None = None, batch_size: int = 64, device: str = "auto"
) -> dict[str, float]:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    metrics_csv = fit_metrics_csv(logs) if logs is not None else None  # fail before the slow part
    model, tokenizer, max_length, label_names = load_model(ckpt, device)
    test_file = find_split_file(data, "test")
    frame, offset = read_table(test_file)
    y_true = np.array(validate_split(frame, str(test_file), label_names, offset))
    probs = predict_proba(model, tokenizer, frame["text"].tolist(), max_length, batch_size, device)
    metrics, table, cm = classification_report(y_true, probs, label_names)

    names = np.array(label_names)
    predictions = pd.DataFrame(
        {"actual": names[y_true], "predicted": names[probs.argmax(1)], "score": probs.max(1).round(6)}
    )
    atomic_write_text(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(output / "per_class.csv", table.round(6).to_csv(index=False))
    atomic_write_text(output / "per_class.json", table.round(6).to_json(orient="records", indent=2) + "\n")
    atomic_write_text(output / "per_class.md", markdown_table(table))
    atomic_write_text(output / "predictions.csv", predictions.to_csv(index=False))
    title = f"test: acc {metrics['test/acc']:.3f}, macro F1 {metrics['test/f1_macro']:.3f} (n={len(y_true)})"
    write_bytes(output / "confusion_matrix.png", confusion_png(cm, label_names, title))
    if metrics_csv is not None:
        train, val = training_curves(metrics_csv)
        atomic_write_text(output / "curves" / "train.csv", train.to_csv(index=False))
        atomic_write_text(output / "curves" / "val.csv", val.to_csv(index=False))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emotions_pl evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `emotions_pl fit`")
    parser.add_argument("--data", required=True, type=Path, help="folder with a test split file")
    parser.add_argument("--output", required=True, type=Path, help="folder for the reports")
    parser.add_argument("--logs", type=Path, help="the run's logs folder (<run>/logs): adds training curves")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = evaluate(args.ckpt, args.data, args.output, args.logs, args.batch_size, args.device)
    except (DataValidationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    headline = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("test/acc", "test/f1_macro", "test/loss"))
    print(f"evaluate: {args.ckpt} on {args.data}: {headline}; reports in {args.output}")
    return 0
