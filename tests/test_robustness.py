"""Robustness: perturbations do what they say, and the report's numbers agree with the predictor's own."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from emotions_pl.artifact.predictor import VARIANT_FILES, Predictor
from emotions_pl.monitor import perturb
from helpers import run_here, run_main

TEXTS = [
    "i feel so happy about the trip tomorrow",
    "im feeling rather rotten so im not very ambitious right now",
    "i was amazed to see snow in july",
    "i have been feeling lonely since everyone moved away",
    "ok",
]


def test_typos_swap_or_drop_one_letter_per_changed_word() -> None:
    out = perturb.apply("typos", TEXTS, seed=3)
    for before, after in zip(TEXTS[:4], out[:4], strict=True):
        old, new = before.split(" "), after.split(" ")
        assert len(old) == len(new) and after != before
        for a, b in zip(old, new, strict=True):
            if a == b:
                continue
            dropped = len(b) == len(a) - 1 and any(a[:i] + a[i + 1 :] == b for i in range(len(a)))
            swapped = len(b) == len(a) and sorted(a) == sorted(b) and sum(map(str.__ne__, a, b)) == 2
            assert dropped or swapped, (a, b)
    assert out[4] == "ok"  # nothing of 3+ letters to change


def test_perturbations_are_deterministic_per_row_and_seed() -> None:
    for name in perturb.PERTURBATIONS:
        first = perturb.apply(name, TEXTS, seed=1)
        assert perturb.apply(name, TEXTS, seed=1) == first
        # a row's output does not depend on the other rows
        assert perturb.apply(name, ["something else", TEXTS[1]], seed=1)[1] == first[1]
    assert perturb.apply("typos", TEXTS, seed=1) != perturb.apply("typos", TEXTS, seed=2)
    with pytest.raises(ValueError, match="unknown perturbation 'shout'"):
        perturb.apply("shout", TEXTS)


def test_uppercase_emoji_hashtags_url_add_only_what_they_say() -> None:
    assert perturb.apply("uppercase", TEXTS) == [t.upper() for t in TEXTS]
    for name, pool in (("emoji", perturb.EMOJI), ("hashtags", perturb.HASHTAGS), ("url", perturb.URLS)):
        for text, out in zip(TEXTS, perturb.apply(name, TEXTS, seed=5), strict=True):
            assert text in out and out != text
            extra = out.replace(text, "", 1).split()
            assert extra and all(
                token in pool if name != "emoji" else set(token) <= set("".join(pool)) for token in extra
            )


def test_word_dropout_keeps_an_ordered_subset() -> None:
    for text, out in zip(TEXTS, perturb.apply("word_dropout", TEXTS, seed=0), strict=True):
        words, kept = text.split(), out.split()
        if len(words) < 2:
            assert out == text
            continue
        assert 1 <= len(kept) < len(words)
        it = iter(words)
        assert all(word in it for word in kept)  # a subsequence, order preserved


@pytest.mark.parametrize(
    ("text", "negated"),
    [
        ("i feel so happy today", "i dont feel so happy today"),
        ("i felt calm", "i didnt feel calm"),
        ("im feeling great", "im not feeling great"),
        ("i was amazed to see snow", "i was not amazed to see snow"),
        ("I AM THRILLED", "I AM NOT THRILLED"),
        ("what a day", "it is not true that what a day"),
    ],
)
def test_negation(text: str, negated: str) -> None:
    assert perturb.negation(text, random.Random(0)) == negated


def test_cli_table_json_and_clean_accuracy_match_the_predictor(
    exported_dir: Path, sample_dir: Path, tmp_path: Path
) -> None:
    data = sample_dir / "test.jsonl"
    out = tmp_path / "report"
    proc = run_here("robustness", "--model", str(exported_dir), "--data", str(data), "--output", str(out))
    variants = [v for v, file in VARIANT_FILES.items() if (exported_dir / file).is_file()]
    report = json.loads((out / "robustness.json").read_text())
    assert list(report["variants"]) == variants and report["rows"] == 24
    names = ["clean", *perturb.PERTURBATIONS]
    for variant in variants:
        rows = report["variants"][variant]["rows"]
        assert [r["perturbation"] for r in rows] == names
        assert all(0 <= r[key] <= 1 for r in rows for key in ("accuracy", "macro_f1", "flip_rate"))
        assert [r["label_may_change"] for r in rows] == [n == "negation" for n in names]
    table = (out / "robustness.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(variants) * len(names)
    assert "| fp32 | negation † |" in table and "flip rate" in table
    assert table.splitlines()[2] in proc.stdout

    # Clean accuracy in the report is the accuracy of the predictor itself on the same rows.
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for variant in variants:
        predictor = Predictor.from_folder(exported_dir, variant=variant)
        predicted = [p["label"] for p in predictor.predict([r["text"] for r in rows])]
        direct = np.mean([p == predictor.labels[r["label"]] for p, r in zip(predicted, rows, strict=True)])
        assert report["variants"][variant]["rows"][0]["accuracy"] == pytest.approx(direct)
    # Seeded: the same run again gives the same numbers.
    again = run_main(
        "robustness",
        "--model",
        str(exported_dir),
        "--data",
        str(data),
        "--variants",
        "fp32",
        "--output",
        str(tmp_path / "again"),
    )
    assert again == 0
    rerun = json.loads((tmp_path / "again" / "robustness.json").read_text())
    assert rerun["variants"]["fp32"]["rows"] == report["variants"]["fp32"]["rows"]


def test_limit_and_errors(exported_dir: Path, sample_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["robustness", "--model", str(exported_dir), "--variants", "fp32", "--output", str(tmp_path)]
    rc = run_main(*args, "--data", str(sample_dir), "--limit", "10", "--perturbations", "typos")
    assert rc == 0
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["rows"] == 10 and report["data"] == str(sample_dir)
    assert [r["perturbation"] for r in report["variants"]["fp32"]["rows"]] == ["clean", "typos"]
    assert run_main(*args, "--data", str(sample_dir), "--perturbations", "typos,shout") == 2
    assert "unknown ['shout']" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "i feel fine", "label": 9}\n')
    assert run_main(*args, "--data", str(bad)) == 2
    assert f"{bad}: 1 bad row(s): row 1: label 9 is outside 0..5" in capsys.readouterr().err
