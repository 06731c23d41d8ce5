"""Slices of a split and the data-quality findings, on hand-made texts with known answers."""

from __future__ import annotations

import pandas as pd
import pytest

from emotions_pl import quality, slices
from emotions_pl.schema import LABELS
from emotions_pl.train.materialize import data_report

SLICED = {
    "i feel sad": {"short", "feel"},
    "i am not happy at all": {"short", "negation"},
    "i don t know what to think": {"short", "negation"},
    "i cant stop smiling today": {"short", "negation"},
    "i didnt expect that": {"short", "negation"},
    "nothing could ruin this lovely day for me now": {"negation"},
    "i was feeling weepy today a href http www": {"feel", "web"},
    "loving the #sunshine with @anna": {"short", "web"},
    "see https://example.com for the notes please": {"short", "web"},
    " ".join(["word"] * 25): {"long"},
    "i feel known and noted and i want a notebook": {"feel"},  # known, noted, want: no negation
    "the feelings of the people in the big hall were warm": set(),  # "feelings" is not feel/feeling
    "i feel weird about the whole thing and everyone in it": {"feel", "strange"},
    "what a curious little dog": {"short", "strange"},
}


def test_slice_membership() -> None:
    texts = list(SLICED)
    masks = slices.members(texts)
    assert set(masks) == {"short", "long", "negation", "feel", "web", "strange"}
    for i, text in enumerate(texts):
        assert {name for name, mask in masks.items() if mask[i]} == SLICED[text], text


def test_slice_table_sizes_scores_and_small_mark() -> None:
    texts = ["i feel sad"] * 40 + ["i am not happy at all"] * 10
    targets = [0] * 40 + [1] * 10
    preds = [0] * 30 + [1] * 10 + [1] * 5 + [0] * 5
    rows = {r["slice"]: r for r in slices.table(texts, preds, targets, len(LABELS))}
    assert list(rows) == ["all", "short", "long", "negation", "feel", "web", "strange"]
    assert rows["all"]["n"] == rows["short"]["n"] == 50 and not rows["all"]["small"]
    assert (
        rows["feel"]["n"] == 40 and rows["feel"]["acc"] == pytest.approx(0.75) and not rows["feel"]["small"]
    )
    assert rows["negation"]["n"] == 10 and rows["negation"]["small"]
    assert rows["negation"]["acc"] == pytest.approx(0.5)
    # macro-F1 over the classes the slice holds or predicts: class 1 F1 2/3, class 0 F1 0
    assert rows["negation"]["f1_macro"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-6)
    assert rows["long"] == {**rows["long"], "n": 0, "acc": None, "f1_macro": None, "small": True}


SPLITS = {
    "train": (["a b", "same text", "Same  Text", "twice", "twice", "only train"], [0, 1, 1, 2, 3, 0]),
    "validation": (["a b", "valid only", "TWICE"], [0, 1, 2]),
    "test": (["a b", "same text", "test only", "valid only"], [4, 1, 5, 2]),
}


def test_quality_counts_and_examples() -> None:
    found = quality.report(SPLITS, LABELS)
    assert {pair: v["texts"] for pair, v in found["cross_split"].items()} == {
        "train&validation": 1,
        "train&test": 2,
        "validation&test": 2,
    }
    assert found["cross_split"]["train&test"]["examples"] == ["a b", "same text"]
    conflicts = found["conflicting_labels"]
    # "a b": sadness in train and validation, fear in test; "twice": two labels in train;
    # "valid only": joy in validation, love in test. "same text" has one label.
    assert conflicts["by_splits"] == {"train&validation&test": 1, "train": 1, "validation&test": 1}
    assert conflicts["texts"] == 3
    example = next(e for e in conflicts["examples"] if e["text"] == "a b")
    assert example["labels"] == {"train": ["sadness"], "validation": ["sadness"], "test": ["fear"]}
    near = found["near_duplicates"]
    assert near["groups"] == 2 and near["by_splits"] == {"train&test": 1, "train&validation": 1}
    assert sorted(near["examples"]) == [["Same  Text", "same text"], ["TWICE", "twice"]]
    assert found["duplicates"] == {"train": 1, "validation": 0, "test": 0}


def test_leaked_uses_the_normalised_text() -> None:
    mask = quality.leaked(["Same Text ", "new", "a  b"], ["same text", "A B"])
    assert mask.tolist() == [True, False, True]


def test_the_data_report_carries_the_findings() -> None:
    tables = {split: pd.DataFrame({"text": t, "label": y}) for split, (t, y) in SPLITS.items()}
    report = data_report(tables, LABELS)
    assert report["quality"] == quality.report(SPLITS, LABELS)
    assert report["overlap"] == {"validation_in_train": 1, "test_in_train": 2}
