"""Export's promotion gate and its per-variant test scores (``--data``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emotions_pl import tables
from emotions_pl.artifact import export, promotion
from emotions_pl.artifact.predictor import Predictor
from emotions_pl.files import sha256
from emotions_pl.schema import LABELS
from helpers import run_here


def _info(sha: str, run_test: float | None = None, fp32_test: float | None = None, data: str = "d") -> dict:
    info: dict = {
        "name": "m",
        "created": "then",
        "source_checkpoint": {"sha256": sha, "path": f"/{sha}.ckpt"},
    }
    info["metrics"] = {"test": {"test/f1_macro": run_test}} if run_test is not None else {}
    info["variants"] = {"fp32": {"test": {"f1_macro": fp32_test, "sha256": data}} if fp32_test else {}}
    return info


def _current(tmp_path: Path, info: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "export_info.json").write_text(json.dumps(info))
    return folder


def test_no_export_in_the_folder_means_nothing_to_gate(tmp_path: Path) -> None:
    assert promotion.promotion(tmp_path / "fresh", _info("new", 0.1)) is None


def test_a_better_candidate_is_promoted_and_the_reason_recorded(tmp_path: Path) -> None:
    folder = _current(tmp_path, _info("old", run_test=0.80))
    record = promotion.promotion(folder, _info("new", run_test=0.85))
    assert record["decision"].startswith("promoted: test f1_macro 0.8500 >= 0.8000")
    assert record["previous"]["source_checkpoint"]["sha256"] == "old" and record["forced"] is False


def test_a_worse_candidate_is_refused_unless_forced(tmp_path: Path) -> None:
    folder = _current(tmp_path, _info("old", run_test=0.90))
    with pytest.raises(
        promotion.PromotionRefused, match=r"holds a better model: test f1_macro 0.9000.*--force"
    ):
        promotion.promotion(folder, _info("new", run_test=0.85))
    record = promotion.promotion(folder, _info("new", run_test=0.85), force=True)
    assert record["forced"] is True and record["decision"].startswith("forced (--force)")
    assert promotion.PromotionRefused.exit_code == 1  # a CheckFailed: exit 1


def test_the_same_test_file_is_preferred_over_the_run_summary(tmp_path: Path) -> None:
    """Both record fp32 on the same test file: that decides, whatever run.json says."""
    folder = _current(tmp_path, _info("old", run_test=0.99, fp32_test=0.80, data="same"))
    record = promotion.promotion(folder, _info("new", run_test=0.50, fp32_test=0.81, data="same"))
    assert "fp32 on the test file" in record["basis"] and record["candidate_score"] == 0.81
    # Different test files are not compared with each other: run.json decides.
    with pytest.raises(promotion.PromotionRefused, match="the run's test metrics"):
        promotion.promotion(folder, _info("new", run_test=0.50, fp32_test=0.99, data="other"))


def test_a_candidate_without_test_metrics_cannot_replace_one_with_them(tmp_path: Path) -> None:
    folder = _current(tmp_path, _info("old", run_test=0.70))
    with pytest.raises(promotion.PromotionRefused, match="records none to compare"):
        promotion.promotion(folder, _info("new"))
    assert promotion.promotion(_current(tmp_path, _info("old")), _info("new"))["decision"].startswith(
        "replaced: the previous model records no test"
    )


def test_re_exporting_the_same_checkpoint_is_always_allowed(tmp_path: Path) -> None:
    folder = _current(tmp_path, _info("same", run_test=0.99))
    assert promotion.promotion(folder, _info("same"))["decision"] == "re-export of the same checkpoint"


def _holding_a_better_model(exported_dir: Path, tmp_path: Path) -> Path:
    """A copy of the smoke export that claims another checkpoint with test macro-F1 0.95."""
    output = tmp_path / "model"
    shutil.copytree(exported_dir, output)
    info = json.loads((output / "export_info.json").read_text())
    info["source_checkpoint"]["sha256"] = "0" * 64
    info["metrics"]["test"] = {"test/f1_macro": 0.95}
    (output / "export_info.json").write_text(json.dumps(info))
    return output


def test_cli_refuses_a_worse_model_with_exit_1_and_keeps_the_folder(
    exported_dir: Path, smoke_ckpt: Path, tmp_path: Path
) -> None:
    """The folder holds a model with a (better) recorded test score; the smoke checkpoint has none."""
    output = _holding_a_better_model(exported_dir, tmp_path)
    before = (output / "export_info.json").read_bytes()
    proc = run_here("export", "--ckpt", str(smoke_ckpt), "--output", str(output), expect=1)
    assert (
        proc.stderr.startswith("error: ")
        and "holds a model with a recorded test f1_macro (0.9500" in proc.stderr
    )
    assert "Pass --force" in proc.stderr
    assert (output / "export_info.json").read_bytes() == before
    assert [p.name for p in output.parent.iterdir()] == ["model"]  # no temporary folder left


def test_forced_export_scores_every_variant_and_records_what_it_replaced(
    exported_dir: Path, smoke_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    output = _holding_a_better_model(exported_dir, tmp_path)

    new = export.export(smoke_ckpt, output, int8=True, data=sample_dir, force=True)
    written = json.loads((output / "export_info.json").read_text())
    assert written == json.loads(json.dumps(new))
    assert written["replaced"]["forced"] is True and written["replaced"]["previous_score"] == 0.95
    assert written["replaced"]["previous"]["source_checkpoint"]["sha256"] == "0" * 64
    card = (output / "README.md").read_text()
    assert "## Replaces" in card and "forced (--force)" in card and "## Test split per variant" in card

    texts, targets = tables.read_split(sample_dir, LABELS, "test")
    for variant in ("fp32", "onnx", "int8"):
        test = written["variants"][variant]["test"]
        predicted = Predictor.from_folder(output, variant).predict_proba(texts).argmax(-1)
        assert test["n"] == len(texts) and test["data"].endswith("test.jsonl")
        assert test["accuracy"] == pytest.approx(float(np.mean(predicted == np.array(targets))), abs=1e-6)
        assert 0 <= test["f1_macro"] <= 1 and test["texts_per_s"] > 0
    assert written["variants"]["fp32"]["test"]["sha256"] == sha256(sample_dir / "test.jsonl")
