"""``compare`` and ``seeds`` end to end: real checkpoints, a real export, real predictions files, the
real entry point; the statistics themselves are checked in test_stats.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers import run_main

SPLIT_ROWS = 24  # the shipped sample's test split


def predictions_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["actual", "predicted", "score"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def smoke_predictions(smoke_ckpt: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke checkpoint's test predictions, written by comparing it with itself (``--output``)."""
    from emotions_pl.artifact import checkpoint
    from emotions_pl.tables import find_split_file, read_split

    fit = checkpoint.load(smoke_ckpt)
    texts, targets = read_split(find_split_file(sample_dir, "test"), fit.labels)
    probs = fit.predictor().predict_proba(texts)
    rows = [
        {"actual": fit.labels[t], "predicted": fit.labels[int(p.argmax())], "score": f"{p.max():.6f}"}
        for t, p in zip(targets, probs, strict=True)
    ]
    return predictions_csv(tmp_path_factory.mktemp("preds") / "smoke.csv", rows)


def test_a_checkpoint_against_its_own_export_differs_by_nothing(
    smoke_ckpt: Path, exported_dir: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "same.json"
    code = run_main(
        "compare", str(smoke_ckpt), f"{exported_dir}@fp32", "--data", str(sample_dir), "--output", str(output)
    )
    assert code == 0
    result = json.loads(output.read_text())
    assert result["rows"] == SPLIT_ROWS
    assert result["difference"]["acc"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert [t["p"] for t in result["mcnemar"]] == [1.0]
    assert result["verdict"].startswith("no detectable difference")
    out = capsys.readouterr().out
    assert "verdict: no detectable difference" in out and "F1 surprise" in out


def test_k_rows_turned_wrong_show_as_minus_k_over_n(
    smoke_predictions: Path, smoke_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    rows = list(csv.DictReader(smoke_predictions.open()))
    right = [i for i, r in enumerate(rows) if r["actual"] == r["predicted"]]
    labels = ["sadness", "joy", "love", "anger", "fear", "surprise"]
    k = min(3, len(right))
    assert k > 0, "the smoke model gets nothing right on the sample; nothing to turn wrong"
    for i in right[:k]:
        rows[i]["predicted"] = labels[(labels.index(rows[i]["actual"]) + 1) % 6]
    worse = predictions_csv(tmp_path / "worse.csv", rows)
    output = tmp_path / "worse.json"
    assert (
        run_main("compare", str(smoke_ckpt), str(worse), "--data", str(sample_dir), "--output", str(output))
        == 0
    )
    result = json.loads(output.read_text())
    assert result["difference"]["acc"]["value"] == pytest.approx(-k / SPLIT_ROWS, abs=1e-15)
    assert (result["mcnemar"][0]["only_a"], result["mcnemar"][0]["only_b"]) == (k, 0)
    assert result["mcnemar"][0]["p"] == pytest.approx(min(1.0, 2 * 0.5**k))
    # a comma list is a pool: the model and its worse copy average to -k / 2n against the model
    pooled = tmp_path / "pooled.json"
    pool = f"{smoke_predictions},{worse}"
    assert (
        run_main("compare", str(smoke_predictions), pool, "--data", str(sample_dir), "--output", str(pooled))
        == 0
    )
    assert json.loads(pooled.read_text())["difference"]["acc"]["value"] == pytest.approx(
        -k / (2 * SPLIT_ROWS)
    )


def test_predictions_of_other_rows_are_refused_naming_the_file_and_row(
    smoke_predictions: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = list(csv.DictReader(smoke_predictions.open()))
    rows[4]["actual"] = "joy" if rows[4]["actual"] != "joy" else "fear"
    other = predictions_csv(tmp_path / "other.csv", rows)
    assert run_main("compare", str(smoke_predictions), str(other), "--data", str(sample_dir)) == 2
    err = capsys.readouterr().err
    assert f"{other}: row 5" in err and "not the same rows" in err
    short = predictions_csv(tmp_path / "short.csv", rows[:5])
    assert run_main("compare", str(smoke_predictions), str(short), "--data", str(sample_dir)) == 2
    assert "5 predictions, but the data has 24 rows" in capsys.readouterr().err
    assert run_main("compare", str(tmp_path / "nothing.pt"), str(short), "--data", str(sample_dir)) == 2
    assert "not an export folder, a .ckpt checkpoint or a predictions file" in capsys.readouterr().err


def test_a_seed_study_fits_each_seed_once_and_compares_with_a_reference(
    smoke_run: Path, sample_dir: Path, tmp_path: Path
) -> None:
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(smoke_run, runs / "seed42")  # a finished fit in its folder is adopted, not refitted
    study = ["seeds", "--config", "configs/experiment/smoke.yaml", "--data", str(sample_dir)]
    flags = ["--", "--trainer.max_epochs", "2"]
    first = tmp_path / "results" / "first.json"
    assert run_main(*study, "--seeds", "42", "7", "--output", str(first), "--runs", str(runs), *flags) == 0
    record = json.loads(first.read_text())
    assert [s["seed"] for s in record["seeds"]] == [42, 7]
    assert not (runs / "seed42" / "fit.log").exists() and (runs / "seed7" / "fit.log").is_file()
    assert json.loads((runs / "seed7" / "run.json").read_text())["fit_seconds"] > 0
    for split in ("validation", "test"):
        values = [s[split]["acc"]["value"] for s in record["seeds"]]
        assert record["summary"][split]["acc"]["mean"] == pytest.approx(sum(values) / 2)
        assert (
            record["seeds"][0][split]["acc"]["ci_low"]
            <= values[0]
            <= record["seeds"][0][split]["acc"]["ci_high"]
        )
    assert (first.parent / "first" / "seed7.test.csv").is_file()

    # Against itself as the reference: nothing is refitted and the pools do not differ.
    fit_log = (runs / "seed7" / "fit.log").read_text()
    again = ["--seeds", "42", "7", "--output", str(first), "--runs", str(runs), "--reference", str(first)]
    assert run_main(*study, *again, *flags) == 0
    assert (runs / "seed7" / "fit.log").read_text() == fit_log
    comparison = json.loads(first.read_text())["reference"]["comparison"]
    assert comparison["members"]["a"] == comparison["members"]["b"] and len(comparison["members"]["a"]) == 2
    assert comparison["difference"]["acc"]["value"] == 0.0
    assert comparison["verdict"].startswith("no detectable difference")


def test_shared_errors_count_the_rows_no_model_gets_right(sample_dir: Path, tmp_path: Path) -> None:
    """scripts/experiments/shared_errors.py: rows wrong for every member of every model, by class."""
    from emotions_pl.schema import LABELS
    from emotions_pl.tables import find_split_file, read_split
    from scripts.experiments.shared_errors import shared_errors

    _, targets = read_split(find_split_file(sample_dir, "test"), LABELS)

    def missing(rows: set[int]) -> list[dict[str, str]]:
        """Right on every row but ``rows``, where it predicts the next label."""
        predicted = [(t + 1) % len(LABELS) if k in rows else t for k, t in enumerate(targets)]
        return [
            {"actual": LABELS[t], "predicted": LABELS[p], "score": "0.9"}
            for t, p in zip(targets, predicted, strict=True)
        ]

    # model a's two members miss rows 0-3 and 0-2, 4, 5; model b misses 0-2 and 5: all miss rows 0-2
    a1, a2, b = missing({0, 1, 2, 3}), missing({0, 1, 2, 4, 5}), missing({0, 1, 2, 5})
    files = [predictions_csv(tmp_path / f"{n}.csv", rows) for n, rows in (("a1", a1), ("a2", a2), ("b", b))]
    result = shared_errors(sample_dir, {"a": f"{files[0]},{files[1]}", "b": str(files[2])})
    assert (result["rows"], result["members"]) == (SPLIT_ROWS, 3)
    assert (result["missed_by_all"], result["missed_by_any"]) == (3, 6)
    assert result["ceiling_accuracy"] == pytest.approx(1 - 3 / SPLIT_ROWS)
    assert sum(c["missed_by_all"] for c in result["by_label"].values()) == 3
    assert sum(c["rows"] for c in result["by_label"].values()) == SPLIT_ROWS
    assert sum(p["rows"] for p in result["pairs"]) == 3
    assert {x["read_as"] for x in result["examples"]} <= set(LABELS)
