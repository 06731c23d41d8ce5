"""Scoring an export's variants, once, for ``export`` (export_info and the model card) and ``evaluate``
(reports/): accuracy, macro-F1 and per-class F1 with bootstrap 95 % intervals, calibration before and
after the calibrator folded into the weights (with the ECE a perfectly calibrated model would show on
as many texts), the slices, and the markdown tables of all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emotions_pl import metrics, slices, stats
from emotions_pl.artifact.calibration import Affine

# evaluate's stages on the split the calibrator was fitted on, as the tables name them
WHERE = {"validation_before": "validation, before", "validation": "validation, after"}


def rounded(values: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def quality(predicted: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 with their intervals, and each class's F1 with its interval."""
    found = stats.intervals(predicted, targets, labels)
    return {
        "accuracy": round(found["acc"]["value"], 6),
        "f1_macro": round(found["f1_macro"]["value"], 6),
        "intervals": {
            "acc": rounded(found["acc"]),
            "f1_macro": rounded(found["f1_macro"]),
            "f1": {label: rounded(v) for label, v in found["f1"].items()},
            "bootstrap": found["bootstrap"],
        },
    }


def calibration(logits: np.ndarray, targets: np.ndarray, affine: Affine) -> dict[str, dict[str, float]]:
    """``metrics.calibration`` of the scores before (calibrator undone) and after (as exported)."""
    stages = {"before": affine.undo(logits), "after": logits}
    return {stage: rounded(metrics.calibration(metrics.softmax64(z), targets)) for stage, z in stages.items()}


def variant(
    logits: np.ndarray, texts: Sequence[str], targets: Any, labels: Sequence[str], affine: Affine
) -> dict[str, Any]:
    """Everything a variant's test scores record (export_info ``variants.<v>.test`` and ``evaluate``)."""
    targets = np.asarray(targets)
    predicted = logits.argmax(-1)
    return {
        **quality(predicted, targets, labels),
        "calibration": calibration(logits, targets, affine),
        "slices": slices.table(texts, predicted, targets, len(labels)),
    }


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def interval(entry: dict[str, float]) -> str:
    return f"{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


def quality_markdown(scored: dict[str, dict[str, Any]]) -> str:
    """Per variant: accuracy and macro-F1 with 95 % intervals; then each class's F1 per variant."""
    names = list(scored)
    lines = ["| variant | accuracy [95 %] | macro-F1 [95 %] |", "|---|---|---|"]
    lines += [
        f"| {n} | {interval(s['intervals']['acc'])} | {interval(s['intervals']['f1_macro'])} |"
        for n, s in scored.items()
    ]
    labels = list(scored[names[0]]["intervals"]["f1"])
    lines += ["", "| class F1 [95 %] | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label in labels:
        cells = [interval(scored[n]["intervals"]["f1"][label]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    bootstrap = scored[names[0]]["intervals"]["bootstrap"]
    lines.append("")
    lines.append(
        f"Percentile bootstrap over the {bootstrap['rows']} texts ({bootstrap['samples']} resamples, "
        f"seed {bootstrap['seed']})."
    )
    return "\n".join(lines) + "\n"


def calibration_markdown(record: dict[str, Any], scored: dict[str, dict[str, dict[str, float]]]) -> str:
    """Per variant and stage: ECE with its bootstrap interval beside the perfectly calibrated floor
    (median and 95th percentile), the same for equal-mass bins, then MCE, Brier, NLL and accuracy.
    ``scored``: variant -> stage -> ``metrics.calibration`` (stages may include ``validation``)."""
    lines = [
        f"Calibrator: {describe(record)}. Before = the logits with it undone, after = as exported. ECE "
        "over 15 bins (equal width, and equal mass) with its 95 % bootstrap interval; floor = the ECE "
        "a perfectly calibrated model with the same scores shows on as many texts (median / 95th "
        "percentile of 1,000 label draws): an ECE under the 95th percentile is noise.",
        "",
        "| variant | split, stage | ECE [95 %] | floor | equal-mass ECE | floor | MCE | Brier | NLL | acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, stages in scored.items():
        for stage, c in stages.items():
            where = WHERE.get(stage, f"test, {stage}")
            lines.append(
                f"| {name} | {where} | {c['ece']:.4f} [{c['ece_low']:.4f}, {c['ece_high']:.4f}] | "
                f"{c['ece_floor_median']:.4f} / {c['ece_floor_p95']:.4f} | {c['ece_mass']:.4f} | "
                f"{c['ece_mass_floor_median']:.4f} / {c['ece_mass_floor_p95']:.4f} | {c['mce']:.4f} | "
                f"{c['brier']:.4f} | {c['nll']:.4f} | {c['acc']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def describe(record: dict[str, Any]) -> str:
    """One phrase for a calibration record: what was folded, fitted where, and why it was kept."""
    if not record or not record.get("folded"):
        return f"none ({(record or {}).get('note', 'exported before calibration')})"
    method = record.get("method", "temperature")
    what = f"temperature T = {record['temperature']:.4f}" if method == "temperature" else "vector scaling"
    chosen = record.get("choice") or {}
    why = f"; {chosen['why']}" if chosen.get("why") else ""
    return f"{what}, fitted by NLL on {record['n']} {record['fitted_on']} texts{why}"


def slices_markdown(scored: dict[str, list[dict[str, Any]]]) -> str:
    """The per-slice table (size, and accuracy / macro-F1 per variant) from ``slices.table`` rows."""
    by_name = {n: {r["slice"]: r for r in rows} for n, rows in scored.items()}
    header = "| slice | texts | " + " | ".join(f"{n} accuracy | {n} macro-F1" for n in by_name) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(by_name)]
    for name, row in next(iter(by_name.values())).items():
        cells = [
            f"{fmt(v[name]['acc'])} | {fmt(v[name]['f1_macro'])}" if v[name]["n"] else "- | -"
            for v in by_name.values()
        ]
        size = f"{row['n']} (small: < {slices.MIN_SIZE})" if row["small"] else str(row["n"])
        lines.append(f"| {name}: {row['description']} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metric_keys(variant_name: str, scored: dict[str, Any]) -> dict[str, float]:
    """A variant's scores as flat scalar keys for reports/metrics.json (``dvc metrics show`` / ``diff``)."""
    values: dict[str, float] = {}
    intervals = scored["intervals"]
    for metric in ("acc", "f1_macro"):
        entry = intervals[metric]
        values |= {f"variants/{variant_name}/{metric}{s}": entry[k] for s, k in SUFFIXES.items()}
    for label, entry in intervals["f1"].items():
        values |= {f"variants/{variant_name}/f1/{label}{s}": entry[k] for s, k in SUFFIXES.items()}
    return values


SUFFIXES = {"": "value", "_ci_low": "ci_low", "_ci_high": "ci_high"}
