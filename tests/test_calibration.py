"""Calibration: the temperature fit, folding 1/T into the head (fp32, ONNX, int8, pipeline), the metrics
on a hand-made example, and ``evaluate --model`` before and after scaling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from conftest import run_main, run_module
from emotions_pl import metrics, slices
from emotions_pl.artifact import calibration, checkpoint
from emotions_pl.artifact.predictor import Predictor
from emotions_pl.schema import LABELS
from emotions_pl.tables import read_split

TEXTS = [
    "i feel so happy and grateful today",
    "i am terrified of what comes next",
    "why would anyone do that, i am furious",
    "i feel loved",
    " ".join(["this sentence is long enough to be truncated by the tokenizer"] * 15),
]


def calibrated_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): a model that is calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, 6))
    probs = metrics.softmax64(logits)
    targets = np.array([rng.choice(6, p=p) for p in probs])
    return logits, targets


@pytest.mark.parametrize("scale", [3.0, 0.5])  # overconfident, underconfident
def test_temperature_fit_undoes_a_known_miscalibration(scale: float) -> None:
    logits, targets = calibrated_labels(4000, seed=1)
    miscalibrated = logits * scale
    temperature = calibration.fit_temperature(miscalibrated, targets)
    assert temperature == pytest.approx(scale, rel=0.08)
    before, after = (
        calibration.nll(miscalibrated, targets),
        calibration.nll(miscalibrated, targets, temperature),
    )
    assert after < before
    # the minimum: no temperature on a fine grid does better
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 400))
    assert after <= min(calibration.nll(miscalibrated, targets, t) for t in grid) + 1e-9
    after_probs = metrics.softmax64(miscalibrated / temperature)
    assert (
        metrics.calibration(after_probs, targets)["ece"]
        < metrics.calibration(metrics.softmax64(miscalibrated), targets)["ece"]
    )


def test_calibration_metrics_on_a_hand_made_example() -> None:
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # right, bin 13 (0.867-0.933)
            [0.91, 0.05, 0.04],  # wrong, bin 13
            [0.62, 0.28, 0.10],  # wrong, bin 9
            [0.20, 0.70, 0.10],  # right, bin 10
            [0.25, 0.33, 0.42],  # right, bin 6
        ]
    )
    targets = np.array([0, 1, 1, 1, 2])
    got = metrics.calibration(probs, targets)
    # bin 13: accuracy 1/2, confidence 0.905; the others hold one text each
    assert got["ece"] == pytest.approx((2 * 0.405 + 0.62 + 0.30 + 0.58) / 5, abs=1e-6)  # float32 inside
    assert got["mce"] == pytest.approx(0.62, abs=1e-6)
    brier = [0.015, 1.7322, 0.9128, 0.14, 0.5078]  # sum over classes of (p - onehot)^2
    assert got["brier"] == pytest.approx(sum(brier) / 5, abs=1e-9)
    assert got["nll"] == pytest.approx(-sum(map(math.log, [0.9, 0.05, 0.28, 0.7, 0.42])) / 5, abs=1e-9)
    assert got["acc"] == pytest.approx(0.6)
    assert 0.0 <= got["ece_low"] <= got["ece_high"] <= 1.0
    assert metrics.calibration(probs, targets) == got  # seeded bootstrap: the same interval
    # each bootstrap resample's ECE (computed all at once) is torchmetrics' ECE of that resample
    indices = metrics.resample_indices(len(targets), samples=20, seed=3)
    for rows, value in zip(indices, metrics.bootstrap_ece(probs, targets, indices), strict=True):
        want = multiclass_calibration_error(torch.tensor(probs[rows]), torch.tensor(targets[rows]), 3, 15)
        assert value == pytest.approx(float(want), abs=1e-6)

    bins = metrics.reliability_bins(probs, targets)
    assert len(bins) == metrics.CALIBRATION_BINS and sum(b["count"] for b in bins) == 5
    assert bins[13]["count"] == 2 and bins[13]["accuracy"] == 0.5
    assert bins[13]["confidence"] == pytest.approx(0.905)
    assert [b["bin"] for b in bins if b["count"]] == [6, 9, 10, 13]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    # the bins are those ECE sums over
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / 5
    assert ece == pytest.approx(got["ece"], abs=1e-6)


def test_the_head_is_found_for_bert_and_roberta_style_classifiers() -> None:
    from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    for config, name in (
        (BertConfig(**small), "classifier"),
        (RobertaConfig(**small), "classifier.out_proj"),
    ):
        config.num_labels = 6
        model = AutoModelForSequenceClassification.from_config(config).eval()
        ids = torch.tensor([[0, 5, 7, 2]])
        with torch.inference_mode():
            before = model(input_ids=ids).logits
        assert calibration.fold_temperature(model, 2.5, 6) == name
        with torch.inference_mode():
            after = model(input_ids=ids).logits
        torch.testing.assert_close(after, before / 2.5)


@pytest.fixture(scope="module")
def calibrated_dir(smoke_ckpt: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke checkpoint exported with ``--data``: a temperature fitted and folded, every variant."""
    output = tmp_path_factory.mktemp("calibrated") / "emotions-calibrated"
    run_module(
        "export", "--ckpt", str(smoke_ckpt), "--output", str(output), "--int8", "--data", str(sample_dir)
    )
    return output


def test_export_folds_the_temperature_into_every_variant(
    calibrated_dir: Path, smoke_ckpt: Path, sample_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import pipeline

    info = json.loads((calibrated_dir / "export_info.json").read_text())
    record = info["calibration"]
    temperature = record["temperature"]
    assert record["folded"] and record["fitted_on"] == "validation" and record["n"] == 24
    assert record["folded_into"] == "classifier.weight, classifier.bias"  # DistilBERT's head
    # the record's NLLs are those of the checkpoint's own validation logits, and T is their minimum
    fit = checkpoint.load(smoke_ckpt)
    texts, targets = read_split(sample_dir, LABELS, "validation")
    raw = fit.predictor().predict_logits(texts)
    assert temperature == pytest.approx(calibration.fit_temperature(raw, targets), rel=1e-6)
    assert record["nll_before"] == pytest.approx(calibration.nll(raw, targets), abs=1e-9)
    assert record["nll_after"] == pytest.approx(calibration.nll(raw, targets, temperature), abs=1e-9)
    assert record["nll_after"] <= record["nll_before"]

    original = fit.predictor().predict_logits(TEXTS)
    expected = metrics.softmax64(original / temperature)
    for variant in ("fp32", "onnx"):
        folded = Predictor.from_folder(calibrated_dir, variant)
        np.testing.assert_allclose(folded.predict_logits(TEXTS), original / temperature, atol=1e-4)
        np.testing.assert_allclose(folded.predict_proba(TEXTS), expected, atol=1e-5)
        assert (folded.predict_logits(TEXTS).argmax(1) == original.argmax(1)).all()
    int8 = Predictor.from_folder(calibrated_dir, "int8").predict_proba(TEXTS)
    assert np.abs(int8 - expected).max() < 0.1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classify = pipeline("text-classification", model=str(calibrated_dir), top_k=None)
    for got, want in zip(classify(TEXTS, truncation=True), expected, strict=True):
        assert {d["label"]: d["score"] for d in got} == pytest.approx(
            dict(zip(LABELS, want, strict=True)), abs=1e-5
        )

    # per variant on the test split: accuracy as scored, calibration before and after, the slices
    test = info["variants"]["fp32"]["test"]
    assert test["calibration"]["before"]["acc"] == test["calibration"]["after"]["acc"] == test["accuracy"]
    assert [r["slice"] for r in test["slices"]] == ["all", *slices.SLICES]
    assert test["slices"][0]["n"] == 24 and test["slices"][0]["small"]
    card = (calibrated_dir / "README.md").read_text()
    assert f"T = {temperature:.4f}" in card and "## Test split per slice" in card
    assert f"{test['calibration']['after']['ece']:.4f}" in card


def test_export_without_data_folds_nothing(exported_dir: Path) -> None:
    info = json.loads((exported_dir / "export_info.json").read_text())
    assert info["calibration"]["temperature"] == 1.0 and not info["calibration"]["folded"]
    assert "no --data" in info["calibration"]["note"]
    assert "Not temperature-scaled (no --data: scores are raw)." in (exported_dir / "README.md").read_text()


def test_evaluate_an_export_before_and_after_scaling(
    calibrated_dir: Path, smoke_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    assert (
        run_main("evaluate", "--model", str(calibrated_dir), "--data", str(sample_dir), "--output", str(out))
        == 0
    )
    values = json.loads((out / "metrics.json").read_text())
    temperature = json.loads((calibrated_dir / "export_info.json").read_text())["calibration"]["temperature"]
    assert values["calibration/temperature"] == pytest.approx(temperature, abs=1e-6)
    texts, targets = read_split(sample_dir, LABELS)
    raw = checkpoint.load(smoke_ckpt).predictor().predict_logits(texts)
    for stage, logits in (("before", raw), ("after", raw / temperature)):
        want = metrics.calibration(metrics.softmax64(logits), targets)
        for key in ("ece", "mce", "brier", "nll"):
            assert values[f"calibration/fp32/{stage}/{key}"] == pytest.approx(want[key], abs=1e-4), (
                stage,
                key,
            )
    for variant in ("fp32", "onnx", "int8"):
        acc = {values[f"calibration/{variant}/{stage}/acc"] for stage in ("before", "after")}
        assert len(acc) == 1
    assert values["calibration/fp32/after/acc"] == pytest.approx(values["test/acc"], abs=1e-6)
    assert values["slices/short/n"] + values["slices/long/n"] <= 24
    assert values["test_unleaked/n"] == 24 and values["test_unleaked/removed"] == 0  # the sample has no leaks
    assert values["test_unleaked/acc"] == pytest.approx(values["test/acc"], abs=1e-6)

    reliability = pd.read_csv(out / "reliability" / "fp32.csv")
    assert (
        len(reliability) == 15 and reliability["count_after"].sum() == reliability["count_before"].sum() == 24
    )
    assert (reliability["bin_mid"] == reliability["ideal"]).all()
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "reliability").iterdir()) == ["fp32.csv", "int8.csv", "onnx.csv"]
    quality = json.loads((out / "data_quality.json").read_text())
    assert quality["conflicting_labels"]["texts"] == 0 and quality["cross_split"]["train&test"]["texts"] == 0
    assert "| variant | stage | ECE |" in (out / "calibration.md").read_text()
    assert (out / "curves" / "val.csv").is_file()  # the source checkpoint's run.json
