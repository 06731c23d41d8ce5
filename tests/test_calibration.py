"""Calibration: the temperature and vector scaling fits, the choice between them by cross-validated
NLL, folding the map into the head (fp32, ONNX, int8, pipeline), the metrics on a hand-made example,
and ``evaluate --model`` before and after scaling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from emotions_pl import metrics, slices
from emotions_pl.artifact import calibration, checkpoint
from emotions_pl.artifact.predictor import Predictor
from emotions_pl.schema import LABELS
from emotions_pl.tables import read_split
from helpers import run_here, run_main

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


def draw(n: int, seed: int, scale: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits z and labels drawn from softmax(scale * z + bias): the true calibration is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, 6))
    cumulative = metrics.softmax64(logits * scale + bias).cumsum(1)
    return logits, (cumulative > rng.random((n, 1))).argmax(1)


VECTOR = calibration.Affine(
    "vector",
    (0.5, 0.8, 1.0, 1.3, 1.6, 2.0),
    (0.9, -0.5, 0.3, -1.2, 0.8, -0.3),  # bias: mean 0, the gauge fit_vector picks
)


def test_affine_apply_undo_and_its_record_round_trip() -> None:
    logits = np.random.default_rng(0).normal(0.0, 3.0, (7, 6))
    np.testing.assert_allclose(VECTOR.apply(logits), logits * VECTOR.scale + VECTOR.bias)
    assert VECTOR.apply(np.ones((1, 6)))[0, 1] == pytest.approx(0.8 - 0.5)
    np.testing.assert_allclose(VECTOR.undo(VECTOR.apply(logits)), logits, atol=1e-12)
    np.testing.assert_allclose(VECTOR.apply(VECTOR.undo(logits)), logits, atol=1e-12)
    for affine in (VECTOR, calibration.Affine.from_temperature(1.7, 6), calibration.Affine.identity(6)):
        record = json.loads(json.dumps(affine.record()))
        assert calibration.Affine.from_record(record, 6) == affine
    assert VECTOR.record()["temperature"] is None and VECTOR.temperature is None
    assert calibration.Affine.identity(6).record() == {
        "method": "none",
        "scale": [1.0] * 6,
        "bias": [0.0] * 6,
        "temperature": 1.0,
    }
    # an export from before vector scaling wrote only T (and other keys)
    old = calibration.Affine.from_record({"temperature": 1.3, "folded": True}, 6)
    assert old.method == "temperature" and old.temperature == pytest.approx(1.3)
    assert old.scale == pytest.approx((1 / 1.3,) * 6) and old.bias == (0.0,) * 6
    np.testing.assert_allclose(old.apply(logits), logits / 1.3)
    assert calibration.Affine.from_record(None, 6) == calibration.Affine.from_record({}, 6)
    assert calibration.Affine.from_record({}, 6) == calibration.Affine.identity(6)
    with pytest.raises(ValueError, match="5 classes"):
        calibration.Affine.from_record({**VECTOR.record(), "scale": [1.0] * 5, "bias": [0.0] * 5}, 6)
    with pytest.raises(ValueError, match="non-zero"):
        calibration.Affine("vector", (1.0, 0.0), (0.0, 0.0))
    with pytest.raises(ValueError, match="> 0"):
        calibration.Affine.from_temperature(-1.0, 6)


def test_keeps_argmax_holds_for_temperature_and_not_for_vector_scaling() -> None:
    logits = np.random.default_rng(1).normal(0.0, 3.0, (500, 6))
    for affine in (calibration.Affine.from_temperature(0.3, 6), calibration.Affine.identity(6)):
        assert affine.keeps_argmax
        assert (affine.apply(logits).argmax(1) == logits.argmax(1)).all()
    assert not VECTOR.keeps_argmax
    assert (VECTOR.apply(logits).argmax(1) != logits.argmax(1)).any()  # it does move labels
    # a positive common scale with a common shift cannot reorder either; a negative one reverses
    assert calibration.Affine("vector", (2.0,) * 6, (0.5,) * 6).keeps_argmax
    assert not calibration.Affine("vector", (-1.0,) * 6, (0.0,) * 6).keeps_argmax


def test_vector_scaling_recovers_a_known_per_class_map() -> None:
    truth = VECTOR
    logits, targets = draw(20_000, seed=2, scale=np.array(truth.scale), bias=np.array(truth.bias))
    fitted = calibration.fit_vector(logits, targets)
    assert fitted.method == "vector" and sum(fitted.bias) == pytest.approx(0.0, abs=1e-12)  # the gauge
    # Over 10 seeds at n = 20000 the estimates' spread was at most 0.04 (scale) and 0.055 (bias) per
    # class, the largest error 0.10: 0.15 and 0.2 are about 4 standard errors. A single temperature
    # (equal scales, zero bias) misses the truth by 0.5 or more.
    np.testing.assert_allclose(fitted.scale, truth.scale, atol=0.15)
    np.testing.assert_allclose(fitted.bias, truth.bias, atol=0.2)
    fitted_nll = calibration.nll(fitted.apply(logits), targets)
    temperature = calibration.fit("temperature", logits, targets)
    assert fitted_nll < calibration.nll(temperature.apply(logits), targets)
    assert fitted_nll <= calibration.nll(truth.apply(logits), targets) + 1e-12  # the maximum likelihood
    # shifting every bias by a constant leaves the softmax, hence the NLL: the gauge is free
    shifted = calibration.Affine("vector", fitted.scale, tuple(b + 3.0 for b in fitted.bias))
    assert calibration.nll(shifted.apply(logits), targets) == pytest.approx(fitted_nll, abs=1e-12)


def test_fit_by_method_name() -> None:
    logits, targets = calibrated_labels(500, seed=4)
    temperature = calibration.fit("temperature", logits * 2.0, targets)
    assert temperature == calibration.Affine.from_temperature(
        calibration.fit_temperature(logits * 2.0, targets), 6
    )
    assert temperature.temperature == pytest.approx(2.0, rel=0.2)
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibration.fit("platt", logits, targets)


def test_cross_validation_folds_are_stratified_and_seeded() -> None:
    targets = np.repeat(np.arange(6), [50, 31, 7, 12, 1, 99])
    fold_of = calibration._fold_of(targets, 5, seed=0)
    for label in range(6):
        counts = np.bincount(fold_of[targets == label], minlength=5)
        assert counts.max() - counts.min() <= 1, (label, counts)
    assert (calibration._fold_of(targets, 5, seed=0) == fold_of).all()
    assert (calibration._fold_of(targets, 5, seed=1) != fold_of).any()
    logits, labels = calibrated_labels(200, seed=5)
    cv = calibration.cross_validated_nll(logits, labels, folds=4, seed=0)
    assert set(cv) == {"temperature", "vector"} and cv == calibration.cross_validated_nll(
        logits, labels, 4, 0
    )
    # held-out rows score worse than the rows fitted on, the more so for the map with more parameters
    in_sample = {m: calibration.nll(calibration.fit(m, logits, labels).apply(logits), labels) for m in cv}
    assert cv["temperature"] > in_sample["temperature"] and cv["vector"] > in_sample["vector"]
    with pytest.raises(ValueError, match="folds"):
        calibration.cross_validated_nll(logits, labels, folds=1)


def test_choose_keeps_temperature_when_only_the_temperature_is_off() -> None:
    logits, targets = draw(300, seed=1, scale=np.full(6, 0.5), bias=np.zeros(6))  # T = 2
    affine, info = calibration.choose(logits, targets)
    assert info["kept"] == "temperature" == affine.method and affine.keeps_argmax
    assert info["cv_nll"]["vector"] >= info["cv_nll"]["temperature"]
    assert info["cv_folds"] == 5 and info["cv_seed"] == 0
    assert f"{info['cv_nll']['temperature']:.4f}" in info["why"]
    # refitted on all rows, not on a fold
    assert affine.temperature == pytest.approx(calibration.fit_temperature(logits, targets), rel=1e-9)
    assert affine.temperature == pytest.approx(2.0, rel=0.25)
    assert calibration.choose(logits, targets) == (affine, info)  # deterministic
    json.dumps(info)


def test_choose_keeps_vector_scaling_when_classes_are_biased() -> None:
    bias = np.array([2.0, -2.0, 1.0, -1.0, 1.5, -1.5])
    logits, targets = draw(5000, seed=3, scale=np.ones(6), bias=bias)
    affine, info = calibration.choose(logits, targets)
    assert info["kept"] == "vector" == affine.method and not affine.keeps_argmax
    assert info["cv_nll"]["vector"] < info["cv_nll"]["temperature"] - 0.3
    assert affine == calibration.fit_vector(logits, targets)  # refitted on all rows
    # n = 5000: a quarter of the rows of the recovery test, so twice its standard errors
    np.testing.assert_allclose(affine.bias, bias, atol=0.3)
    np.testing.assert_allclose(affine.scale, np.ones(6), atol=0.2)
    # a class with no rows: nothing held out could penalise pushing its bias to -inf, so no vector
    rows = np.flatnonzero(targets[:300] != 5)  # few rows: a fit chasing a bias to -inf runs long
    affine, info = calibration.choose(logits[rows], targets[rows])
    assert info["kept"] == "temperature" and "[5]" in info["why"]


def test_fold_puts_the_map_into_bert_and_roberta_style_heads() -> None:
    from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    ids = torch.tensor([[0, 5, 7, 2], [0, 9, 3, 2], [0, 11, 12, 13]])
    for config, name in (
        (BertConfig(**small), "classifier"),
        (RobertaConfig(**small), "classifier.out_proj"),
    ):
        config.num_labels = 6
        for affine in (calibration.Affine.from_temperature(2.5, 6), VECTOR):
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_config(config).eval()
            with torch.no_grad():  # a non-zero head bias, so that b' = a b + c is exercised
                calibration.head(model, 6)[1].bias.normal_()
                before = model(input_ids=ids).logits.double().numpy()
            assert calibration.fold(model, affine, 6) == name
            with torch.no_grad():
                after = model(input_ids=ids).logits.double().numpy()
            np.testing.assert_allclose(after, affine.apply(before), atol=1e-5)
            assert (after.argmax(1) == before.argmax(1)).all() or not affine.keeps_argmax


def test_fold_refuses_a_bias_it_has_nowhere_to_put() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 6, bias=False))
    with pytest.raises(ValueError, match=r"^1 has no bias"):
        calibration.fold(model, VECTOR, 6)
    assert calibration.fold(model, calibration.Affine("vector", VECTOR.scale, (0.0,) * 6), 6) == "1"
    with pytest.raises(ValueError, match="6 classes, the model 5"):
        calibration.fold(model, VECTOR, 5)


@pytest.fixture(scope="module")
def calibrated_dir(smoke_ckpt: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke checkpoint exported with ``--data``: a temperature fitted and folded, every variant."""
    output = tmp_path_factory.mktemp("calibrated") / "emotions-calibrated"
    run_here(
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
    # the calibrator was chosen by cross-validated NLL on validation, and the record says why
    assert record["method"] == record["choice"]["kept"] == "temperature"  # 24 rows: one T is kept
    assert set(record["choice"]["cv_nll"]) == {"temperature", "vector"} and record["argmax_unchanged"]
    assert test["intervals"]["acc"]["ci_low"] <= test["accuracy"] <= test["intervals"]["acc"]["ci_high"]
    card = (calibrated_dir / "README.md").read_text()
    assert f"Calibrator: temperature T = {temperature:.4f}" in card and "## Test split per slice" in card
    assert f"{test['calibration']['after']['ece']:.4f}" in card
    assert f"{test['accuracy']:.4f} [{test['intervals']['acc']['ci_low']:.4f}, " in card


def test_export_without_data_folds_nothing(exported_dir: Path) -> None:
    info = json.loads((exported_dir / "export_info.json").read_text())
    assert info["calibration"]["temperature"] == 1.0 and not info["calibration"]["folded"]
    assert "no --data" in info["calibration"]["note"]
    assert "Calibrator: none (no --data: scores are raw)." in (exported_dir / "README.md").read_text()


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
    table = (out / "calibration.md").read_text()
    assert (
        "| variant | split, stage | ECE [95 %] | floor |" in table and "| fp32 | validation, after |" in table
    )
    # each variant's validation split against its own floor, beside the test split's
    for variant in ("fp32", "onnx", "int8"):
        for stage in ("before", "after", "validation"):
            key = f"calibration/{variant}/{stage}/"
            assert 0 <= values[key + "ece_floor_median"] <= values[key + "ece_floor_p95"]
            assert values[key + "ece_low"] <= values[key + "ece"] <= values[key + "ece_high"]
        for metric in ("acc", "f1_macro"):
            key = f"variants/{variant}/{metric}"
            assert values[key + "_ci_low"] <= values[key] <= values[key + "_ci_high"]
    assert values["variants/fp32/acc"] == pytest.approx(values["test/acc"], abs=1e-6)
    assert (out / "curves" / "val.csv").is_file()  # the source checkpoint's run.json


def test_a_vector_scaled_export_may_move_labels_and_evaluate_undoes_it(
    smoke_ckpt: Path, sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The choice is the data's; force vector scaling with strong per-class biases, so labels move.
    forced = calibration.Affine("vector", (0.5, 1.5, 1.0, 2.0, 0.8, 1.2), (2.0, -1.0, 0.0, -2.0, 0.5, 0.5))
    monkeypatch.setattr(
        calibration, "choose", lambda z, y: (forced, {"kept": "vector", "why": "forced by the test"})
    )
    output = tmp_path / "vector"
    export_args = ["export", "--ckpt", str(smoke_ckpt), "--output", str(output), "--data", str(sample_dir)]
    assert run_main(*export_args) == 0
    info = json.loads((output / "export_info.json").read_text())
    record = info["calibration"]
    assert record["method"] == "vector" and record["temperature"] is None and not record["argmax_unchanged"]
    assert calibration.Affine.from_record(record, 6) == forced
    texts, targets = read_split(sample_dir, LABELS)
    raw = checkpoint.load(smoke_ckpt).predictor().predict_logits(texts)
    folded = Predictor.from_folder(output, "fp32").predict_logits(texts)
    np.testing.assert_allclose(folded, forced.apply(raw), atol=1e-4)  # the map lives in the weights
    moved = raw.argmax(1) != folded.argmax(1)
    assert moved.any()
    test = info["variants"]["fp32"]["test"]
    before, after = test["calibration"]["before"], test["calibration"]["after"]
    assert before["acc"] == pytest.approx((raw.argmax(1) == np.array(targets)).mean(), abs=1e-6)
    assert (
        after["acc"]
        == test["accuracy"]
        == pytest.approx((folded.argmax(1) == np.array(targets)).mean(), abs=1e-6)
    )
    assert "vector scaling" in (output / "README.md").read_text()

    out = tmp_path / "reports"
    assert run_main("evaluate", "--model", str(output), "--data", str(sample_dir), "--output", str(out)) == 0
    values = json.loads((out / "metrics.json").read_text())
    assert "calibration/temperature" not in values
    want = metrics.calibration(metrics.softmax64(raw), targets)
    assert values["calibration/fp32/before/nll"] == pytest.approx(want["nll"], abs=1e-4)
    assert values["calibration/fp32/before/acc"] == pytest.approx(before["acc"], abs=1e-6)
