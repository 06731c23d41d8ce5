"""``python -m emotions_pl compare A B --data DIR``: is B really better than A, over the same test rows?

Each side is an export folder (``DIR`` or ``DIR@int8`` for one of its variants), a ``fit`` checkpoint,
a predictions file (``evaluate``'s ``predictions.csv`` with its ``actual`` column, or ``predict``'s
``predictions.jsonl`` with its texts), or a pool of them: a comma-separated list, or a seed study's
JSON (``seeds``), whose members are its seeds. Every member is scored on the same rows, checked to be
the same rows, and ``stats.paired`` does the rest: each side's accuracy and macro-F1, B - A from the
integer counts with its paired-bootstrap 95 % interval, McNemar's exact p per member pair, the
per-class F1 changes and a one-line verdict. A table on stdout; JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write_text

VARIANT_SEP = "@"


def read_predictions_file(path: Path, texts: list[str], targets: list[int], labels: list[str]) -> list[int]:
    """Predicted label indices from a predictions file, after checking it holds the same rows."""
    index = {name: k for k, name in enumerate(labels)}
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        key, check, expected = "label", "text", texts
    else:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        key, check, expected = "predicted", "actual", [labels[t] for t in targets]
    if len(rows) != len(expected):
        raise UserError(f"{path}: {len(rows)} predictions, but the data has {len(expected)} rows.")
    predicted = []
    for number, (row, want) in enumerate(zip(rows, expected, strict=True), start=1):
        if row.get(key) not in index:
            raise UserError(f"{path}: row {number}: field {key!r} is {row.get(key)!r}, not one of {labels}.")
        if check in row and row[check] != want:
            raise UserError(f"{path}: row {number}: {check!r} differs from the data's; not the same rows.")
        predicted.append(index[row[key]])
    return predicted


def members(spec: str) -> list[str]:
    """The members of one side: a comma list, a seed study's JSON (its seeds' predictions), or one."""
    parts = [p for p in spec.split(",") if p]
    if len(parts) == 1 and parts[0].endswith(".json"):
        path = Path(parts[0])
        if not path.is_file():
            raise UserError(f"{path}: no such seed-study file.")
        study = json.loads(path.read_text(encoding="utf-8"))
        found = [str(path.parent / s["predictions"]) for s in study.get("seeds", []) if s.get("predictions")]
        if not found:
            raise UserError(f"{path}: no seeds with test predictions in this study.")
        return found
    return parts


def predict(member: str, texts: list[str], targets: list[int], labels: list[str]) -> list[int]:
    """One member's predicted label indices on ``texts``."""
    from emotions_pl.artifact import checkpoint
    from emotions_pl.artifact.predictor import INFO_FILE, Predictor, read_info

    path_text, _, variant = member.partition(VARIANT_SEP)
    path = Path(path_text)
    if path.is_dir() and (path / INFO_FILE).is_file():
        variant = variant or "fp32"
        if variant not in (read_info(path).get("variants") or {"fp32": {}}):
            raise UserError(f"{member}: the export has no {variant!r} variant.")
        logits = Predictor.from_folder(path, variant).predict_logits(texts)
        model_labels = list(read_info(path)["labels"])
    elif path.suffix == ".ckpt":
        fit = checkpoint.load(path)
        logits, model_labels = fit.predictor().predict_logits(texts), fit.labels
    elif path.suffix in {".csv", ".jsonl"} and path.is_file():
        return read_predictions_file(path, texts, targets, labels)
    else:
        raise UserError(
            f"{member}: not an export folder, a .ckpt checkpoint or a predictions file (.csv / .jsonl)."
        )
    if model_labels != labels:
        raise UserError(f"{member}: its labels {model_labels} are not the data's {labels}.")
    return [int(k) for k in logits.argmax(-1)]


def compare(
    spec_a: str, spec_b: str, data: Path, split: str = "test", names: tuple[str, str] | None = None
) -> dict[str, Any]:
    from emotions_pl import stats, tables
    from emotions_pl.schema import LABELS

    path = tables.find_split_file(data, split) if data.is_dir() else data
    if not path.exists():
        raise UserError(f"--data {data}: no such data file or folder.")
    texts, targets = tables.read_split(path, LABELS, split)
    sides = [[predict(m, texts, targets, LABELS) for m in members(spec)] for spec in (spec_a, spec_b)]
    names = names or (spec_a, spec_b)
    result = stats.paired(sides[0], sides[1], targets, LABELS, names=names)
    result["data"] = {"path": str(path), "split": split}
    result["members"] = {"a": members(spec_a), "b": members(spec_b)}
    return result


def signed(value: float) -> str:
    return f"{value:+.4f}"


def table(result: dict[str, Any]) -> str:
    a, b = result["names"]["a"], result["names"]["b"]
    sizes = {s: len(result["members"][s]) for s in ("a", "b")}
    lines = [
        f"compare on {result['data']['path']} ({result['rows']} rows); A = {a} ({sizes['a']} model(s)), "
        f"B = {b} ({sizes['b']} model(s))",
        "",
        f"{'metric':<18} {'A':>8} {'B':>8} {'B - A':>8}  95 % interval (paired bootstrap)",
    ]
    for metric in ("acc", "f1_macro"):
        d = result["difference"][metric]
        lines.append(
            f"{metric:<18} {result['a'][metric]:>8.4f} {result['b'][metric]:>8.4f} {signed(d['value']):>8}"
            f"  [{signed(d['ci_low'])}, {signed(d['ci_high'])}]"
        )
    for label, c in result["f1_per_class"].items():
        lines.append(
            f"{'F1 ' + label:<18} {c['a']:>8.4f} {c['b']:>8.4f} {signed(c['difference']):>8}"
            f"  [{signed(c['ci_low'])}, {signed(c['ci_high'])}]"
        )
    lines.append("")
    correct = result["correct"]
    lines.append(f"correct rows: A {correct['a']}, B {correct['b']} of {result['rows']}")
    for t in result["mcnemar"]:
        lines.append(
            f"McNemar A[{t['a']}] vs B[{t['b']}]: only A right {t['only_a']}, only B right {t['only_b']}, "
            f"exact p = {t['p']:.4g}"
        )
    lines += ["", f"verdict: {result['verdict']}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("compare")
    for side in ("a", "b"):
        parser.add_argument(
            side,
            metavar=side.upper(),
            help="export folder (DIR or DIR@variant), .ckpt, predictions .csv/.jsonl, a comma list of "
            "them, or a seed study's JSON",
        )
    parser.add_argument("--data", type=Path, required=True, help="data folder (or one split file)")
    parser.add_argument("--split", default="test", help="the split to score (default %(default)s)")
    parser.add_argument("--names", nargs=2, metavar=("A", "B"), help="names for the two sides")
    parser.add_argument("--output", type=Path, help="write the comparison as JSON here")
    return parser


def run(args: argparse.Namespace) -> int:
    result = compare(args.a, args.b, args.data, args.split, tuple(args.names) if args.names else None)
    print(table(result))
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
        print(f"comparison: {args.output}")
    return 0
