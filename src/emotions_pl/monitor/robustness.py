"""``python -m emotions_pl robustness``: how much accuracy survives noisy input, per exported variant.

Runs the exported model (fp32 and its faster ONNX / int8 variants) on a labelled split, clean and
under each perturbation in ``perturb.py``, and reports accuracy, macro-F1, the change from clean
accuracy and the flip rate (share of predictions that differ from the clean prediction on the same
row). Negation may change the true emotion, so its row measures flips under a meaning change, not
accuracy against re-labelled truth. Writes ``robustness.json`` and ``robustness.md``; seeded, so two
runs give the same table.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write_text
from emotions_pl.monitor import perturb
from emotions_pl.tables import read_split

CLEAN = "clean"


def load_split(
    path: Path, labels: Sequence[str], limit: int | None, seed: int
) -> tuple[list[str], np.ndarray]:
    """A split file (or a data folder's test split) as texts and label indices; ``limit`` keeps a
    seeded sample of rows, in file order."""
    texts, targets = read_split(path, labels)
    if limit is not None and limit < len(texts):
        keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
        texts, targets = [texts[i] for i in keep], [targets[i] for i in keep]
    return texts, np.asarray(targets)


def predict(predictor: Any, texts: Sequence[str], batch_size: int) -> np.ndarray:
    return predictor.predict_proba(list(texts), batch_size).argmax(1)


def scores(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 as in training (``metrics.py``), so that the numbers compare."""
    from emotions_pl import metrics

    values = metrics.scores(preds, targets, num_classes)
    return {"accuracy": values["acc"], "macro_f1": values["f1_macro"]}


def evaluate_variant(
    predictor: Any, texts: list[str], targets: np.ndarray, names: Sequence[str], seed: int, batch_size: int
) -> dict[str, Any]:
    n_classes = len(predictor.labels)
    start = time.perf_counter()
    clean = predict(predictor, texts, batch_size)
    seconds = time.perf_counter() - start
    base = scores(clean, targets, n_classes)
    rows = [
        {"perturbation": CLEAN, **base, "delta_accuracy": 0.0, "flip_rate": 0.0, "label_may_change": False}
    ]
    for name in names:
        preds = predict(predictor, perturb.apply(name, texts, seed), batch_size)
        metrics = scores(preds, targets, n_classes)
        rows.append(
            {
                "perturbation": name,
                **metrics,
                "delta_accuracy": metrics["accuracy"] - base["accuracy"],
                "flip_rate": float((preds != clean).mean()),
                "label_may_change": name in perturb.LABEL_CHANGING,
            }
        )
    return {
        "rows": rows,
        "clean_texts_per_second": len(texts) / seconds,
        "info": getattr(predictor, "info", None),
    }


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| variant | perturbation | accuracy | Δ accuracy | macro-F1 | flip rate |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for variant, result in results.items():
        for row in result["rows"]:
            mark = " †" if row["label_may_change"] else ""
            lines.append(
                f"| {variant} | {row['perturbation']}{mark} | {row['accuracy']:.4f} "
                f"| {row['delta_accuracy']:+.4f} | {row['macro_f1']:.4f} | {row['flip_rate']:.4f} |"
            )
    if any(row["label_may_change"] for result in results.values() for row in result["rows"]):
        lines.append("")
        lines.append(
            "† may change the true emotion: accuracy is against the original labels; read the flip rate "
            "(share of predictions that changed), not accuracy."
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("robustness")
    p.add_argument("--model", required=True, help="exported model folder (from `emotions_pl export`)")
    p.add_argument(
        "--data", required=True, type=Path, help="labelled split file, or a data folder (its test split)"
    )
    p.add_argument(
        "--variants",
        help="comma-separated subset of fp32, onnx, int8 (default: every variant the export holds)",
    )
    p.add_argument(
        "--perturbations",
        default=",".join(perturb.PERTURBATIONS),
        help=f"comma-separated subset of {', '.join(perturb.PERTURBATIONS)}",
    )
    p.add_argument("--limit", type=int, help="use a seeded sample of this many rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", required=True, type=Path, help="folder for robustness.json and robustness.md")
    return p


def robustness(args: argparse.Namespace) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from emotions_pl.artifact.predictor import VARIANT_FILES, Predictor

    hf_logging.disable_progress_bar()

    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    else:
        variants = [v for v, file in VARIANT_FILES.items() if (Path(args.model) / file).is_file()]
    names = [n.strip() for n in args.perturbations.split(",") if n.strip()]
    unknown = sorted(set(names) - set(perturb.PERTURBATIONS))
    if unknown:
        raise UserError(f"--perturbations: unknown {unknown}; choose from {list(perturb.PERTURBATIONS)}.")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be positive, got {args.limit}.")
    results: dict[str, dict[str, Any]] = {}
    texts: list[str] = []
    for variant in variants:
        predictor = Predictor.from_folder(args.model, variant=variant)
        if not texts:
            texts, targets = load_split(args.data, list(predictor.labels), args.limit, args.seed)
        results[variant] = evaluate_variant(predictor, texts, targets, names, args.seed, args.batch_size)
    report = {
        "model": str(args.model),
        "data": str(args.data),
        "rows": len(texts),
        "seed": args.seed,
        "perturbations": names,
        "label_changing": sorted(perturb.LABEL_CHANGING & set(names)),
        "variants": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "robustness.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(args.output / "robustness.md", markdown_table(results))
    return report


def run(args: argparse.Namespace) -> int:
    report = robustness(args)
    print(f"{report['rows']} rows of {report['data']}, seed {report['seed']}\n")
    print(markdown_table(report["variants"]))
    print(f"wrote {args.output / 'robustness.json'} and {args.output / 'robustness.md'}")
    return 0
