"""``python -m emotions_pl drift``: has the traffic moved away from the data the model was trained on?

Compares a reference (training data) with a current sample (the server's prediction logs or a data
file) on text length, out-of-vocabulary rate, tokenizer ``[UNK]`` rate, predicted-label shares and
prediction confidence. Each check is a two-sample test; a check drifts only when its p-value is
below the Bonferroni-corrected level *and* its effect size passes a floor, so that large samples of
the same distribution (where tiny differences become "significant") do not raise false alarms.
Writes ``drift.json`` and ``drift.html`` and exits 1 when drift passes the threshold, so it can gate
a job. Loading the samples is in ``drift_sample``, the HTML report in ``drift_report``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write_text
from emotions_pl.monitor.drift_report import figures, render_html
from emotions_pl.monitor.drift_sample import Sample, add_predictions, load_sample, subsample
from emotions_pl.schema import LABELS

DEFAULT_MIN_EFFECT = {"text_length": 0.1, "oov_rate": 0.05, "unk_rate": 0.02, "label": 0.1, "score": 0.1}
SMALL_SAMPLE = 50
_WORDS = re.compile(r"\w+")


@dataclass
class Check:
    name: str
    test: str
    p_value: float | None
    effect: float | None
    effect_name: str
    min_effect: float
    drift: bool = False
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- checks


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def oov_fractions(texts: Sequence[str], vocabulary: set[str]) -> tuple[np.ndarray, float]:
    """Per-text out-of-vocabulary share (texts are the independent units) and the pooled token rate."""
    per_text, oov, total = [], 0, 0
    for text in texts:
        tokens = words(text)
        missing = sum(t not in vocabulary for t in tokens)
        per_text.append(missing / len(tokens) if tokens else 0.0)
        oov, total = oov + missing, total + len(tokens)
    return np.asarray(per_text), oov / max(total, 1)


def unk_fractions(texts: Sequence[str], tokenizer: Any) -> tuple[np.ndarray, float]:
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)[
        "input_ids"
    ]  # no truncation: count all
    unk = tokenizer.unk_token_id
    per_text = np.asarray([sum(i == unk for i in row) / len(row) if row else 0.0 for row in ids])
    return per_text, sum(sum(i == unk for i in row) for row in ids) / max(sum(map(len, ids)), 1)


def ks_check(name: str, ref: np.ndarray, cur: np.ndarray, min_effect: float) -> Check:
    from scipy import stats

    result = stats.ks_2samp(ref, cur)
    return Check(
        name,
        "two-sample Kolmogorov-Smirnov",
        float(result.pvalue),
        float(result.statistic),
        "KS distance",
        min_effect,
        details={
            "reference": {"mean": float(ref.mean()), "median": float(np.median(ref))},
            "current": {"mean": float(cur.mean()), "median": float(np.median(cur))},
        },
    )


def rate_check(
    name: str, ref: tuple[np.ndarray, float], cur: tuple[np.ndarray, float], min_effect: float, note: str
) -> Check:
    """Mann-Whitney U on per-text rates; the effect is the difference of the pooled token rates."""
    from scipy import stats

    (ref_texts, ref_rate), (cur_texts, cur_rate) = ref, cur
    if np.array_equal(np.unique(np.concatenate([ref_texts, cur_texts])), [0.0]):
        p = 1.0  # no unknown token on either side; the U test is undefined on all-equal data
    else:
        p = float(stats.mannwhitneyu(ref_texts, cur_texts, alternative="two-sided").pvalue)
    return Check(
        name,
        "Mann-Whitney U on per-text rates",
        p,
        cur_rate - ref_rate,
        "rate difference (current - ref)",
        min_effect,
        details={"reference_rate": ref_rate, "current_rate": cur_rate, "note": note},
    )


def label_check(ref: Sequence[str], cur: Sequence[str], labels: Sequence[str], min_effect: float) -> Check:
    """Chi-square test of homogeneity on the label counts; the effect is the total variation distance."""
    from scipy import stats

    ref_counts, cur_counts = Counter(ref), Counter(cur)
    used = [name for name in labels if ref_counts[name] + cur_counts[name] > 0]
    table = np.array([[ref_counts[n] for n in used], [cur_counts[n] for n in used]])
    p = float(stats.chi2_contingency(table).pvalue) if len(used) > 1 else 1.0
    ref_share, cur_share = table[0] / table[0].sum(), table[1] / table[1].sum()
    return Check(
        "label",
        "chi-square test of homogeneity",
        p,
        float(0.5 * np.abs(ref_share - cur_share).sum()),
        "total variation distance",
        min_effect,
        details={
            "reference_share": dict(zip(used, ref_share.round(4).tolist(), strict=True)),
            "current_share": dict(zip(used, cur_share.round(4).tolist(), strict=True)),
        },
    )


def skipped(name: str, reason: str, min_effect: float) -> Check:
    return Check(name, "", None, None, "", min_effect, skipped=reason)


def run_checks(
    ref: Sample,
    cur: Sample,
    labels: Sequence[str],
    min_effect: dict[str, float],
    alpha: float = 0.01,
    tokenizer: Any = None,
    seed: int = 0,
) -> list[Check]:
    """Run every check the two samples allow; a check drifts when p < alpha / checks run and the effect
    reaches its floor."""
    checks = [ks_check("text_length", ref.length, cur.length, min_effect["text_length"])]

    if ref.text is None or cur.text is None or ref.size < 8:
        checks.append(
            skipped(
                "oov_rate",
                "needs texts on both sides (logs keep none unless asked to)",
                min_effect["oov_rate"],
            )
        )
    else:
        # The reference's own OOV rate is measured on a held-out part, against the vocabulary of the rest,
        # so that both sides are compared with a vocabulary that has not seen them.
        order = list(range(ref.size))
        random.Random(seed).shuffle(order)
        n_hold = min(ref.size // 4, 2000)
        held, rest = order[:n_hold], order[n_hold:]
        vocabulary = {w for i in rest for w in words(ref.text[i])}
        checks.append(
            rate_check(
                "oov_rate",
                oov_fractions([ref.text[i] for i in held], vocabulary),
                oov_fractions(cur.text, vocabulary),
                min_effect["oov_rate"],
                f"vocabulary of {len(vocabulary)} words from {len(rest)} reference texts; "
                f"reference rate on {n_hold} held-out texts",
            )
        )

    if tokenizer is None or ref.text is None or cur.text is None:
        checks.append(
            skipped(
                "unk_rate", "needs --model (its tokenizer) and texts on both sides", min_effect["unk_rate"]
            )
        )
    else:
        checks.append(
            rate_check(
                "unk_rate",
                unk_fractions(ref.text, tokenizer),
                unk_fractions(cur.text, tokenizer),
                min_effect["unk_rate"],
                f"share of {tokenizer.unk_token} tokens",
            )
        )

    if ref.label is None or cur.label is None:
        checks.append(skipped("label", "needs labels or predictions on both sides", min_effect["label"]))
    elif ref.label_kind != cur.label_kind:
        checks.append(
            skipped(
                "label",
                f"reference labels are {ref.label_kind}, current {cur.label_kind}: "
                "pass --model to compare predictions with predictions",
                min_effect["label"],
            )
        )
    else:
        check = label_check(ref.label, cur.label, labels, min_effect["label"])
        check.details["labels"] = cur.label_kind
        checks.append(check)

    if ref.score is None or cur.score is None:
        checks.append(
            skipped("score", "needs prediction scores on both sides (--model or logs)", min_effect["score"])
        )
    else:
        checks.append(ks_check("score", ref.score, cur.score, min_effect["score"]))

    ran = [c for c in checks if c.skipped is None]
    for check in ran:
        check.drift = bool(check.p_value < alpha / len(ran) and abs(check.effect) >= check.min_effect)
    return checks


# ---------------------------------------------------------------- CLI


def parse_effects(values: Sequence[str]) -> dict[str, float]:
    floors = dict(DEFAULT_MIN_EFFECT)
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or name not in floors:
            raise UserError(f"--min-effect {value!r}: expected NAME=VALUE with NAME in {sorted(floors)}.")
        try:
            floors[name] = float(number)
        except ValueError:
            raise UserError(f"--min-effect {value!r}: {number!r} is not a number.") from None
    return floors


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("drift")
    p.add_argument(
        "--reference",
        required=True,
        type=Path,
        nargs="+",
        help="training data: a file, a data folder (its train split) or earlier logs",
    )
    p.add_argument(
        "--current",
        required=True,
        type=Path,
        nargs="+",
        help="prediction logs (files or a folder from `serve --log-dir`) or data files",
    )
    p.add_argument(
        "--model", help="exported model folder: predicts labels/scores for data files, adds [UNK] rate"
    )
    p.add_argument("--variant", default="fp32", help="model variant to predict with (fp32, onnx, int8)")
    p.add_argument("--output", required=True, type=Path, help="folder for drift.json and drift.html")
    p.add_argument("--alpha", type=float, default=0.01, help="family-wise significance level (Bonferroni)")
    p.add_argument("--threshold", type=int, default=1, help="fail (exit 1) when this many checks drift")
    p.add_argument(
        "--min-effect",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"effect-size floor per check; defaults {DEFAULT_MIN_EFFECT}",
    )
    p.add_argument("--max-rows", type=int, default=5000, help="sample at most this many rows per side")
    p.add_argument("--seed", type=int, default=0)
    return p


def drift(args: argparse.Namespace) -> dict[str, Any]:
    floors = parse_effects(args.min_effect)
    if args.threshold < 1 or args.max_rows < 1 or not 0 < args.alpha < 1:
        raise UserError("--threshold and --max-rows must be >= 1 and --alpha between 0 and 1.")
    predictor = tokenizer = None
    labels: Sequence[str] = LABELS
    if args.model:
        from transformers.utils import logging as hf_logging

        from emotions_pl.artifact.predictor import Predictor

        hf_logging.disable_progress_bar()

        predictor = Predictor.from_folder(args.model, variant=args.variant)
        labels = list(predictor.labels)
        tokenizer = predictor.tokenizer  # the [UNK] check reuses it rather than loading the folder's again
    ref = subsample(load_sample(args.reference, "reference", labels), args.max_rows, args.seed)
    cur = subsample(load_sample(args.current, "current", labels), args.max_rows, args.seed)
    if predictor is not None:
        for sample in (ref, cur):
            add_predictions(sample, predictor)
    checks = run_checks(ref, cur, labels, floors, args.alpha, tokenizer, args.seed)
    ran = [c for c in checks if c.skipped is None]
    drifted = sum(c.drift for c in ran)
    warnings = [
        f"{role} has only {s.size} rows; the tests have little power"
        for role, s in (("reference", ref), ("current", cur))
        if s.size < SMALL_SAMPLE
    ]
    summary = {
        "drift": drifted >= args.threshold,
        "drifted": drifted,
        "checks_run": len(ran),
        "threshold": args.threshold,
        "alpha": args.alpha,
        "alpha_per_check": args.alpha / max(len(ran), 1),
        "model": args.model,
        "reference": {"source": ref.source, "kind": ref.kind, "rows": ref.size},
        "current": {"source": cur.source, "kind": cur.kind, "rows": cur.size},
        "warnings": warnings,
        "checks": [asdict(c) for c in checks],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "drift.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(args.output / "drift.html", render_html(summary, figures(ref, cur, labels)))
    return summary


def run(args: argparse.Namespace) -> int:
    summary = drift(args)
    for c in summary["checks"]:
        if c["skipped"]:
            print(f"{c['name']:<12} skipped: {c['skipped']}")
        else:
            status = "DRIFT" if c["drift"] else "ok"
            print(
                f"{c['name']:<12} {status:<6} p={c['p_value']:.3g} {c['effect_name']}={c['effect']:.3f} "
                f"(floor {c['min_effect']})"
            )
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    verdict = "DRIFT" if summary["drift"] else "no drift"
    print(f"{verdict}: {summary['drifted']}/{summary['checks_run']} checks drifted; report in {args.output}")
    return 1 if summary["drift"] else 0
