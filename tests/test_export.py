"""Export: the folder's contents, parity with the checkpoint, pipeline() offline, atomic replacement."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from emotions_pl import export
from emotions_pl.data import LABELS
from emotions_pl.inference import ExportFolderError, load_predictor

TEXTS = [
    "i feel so happy and grateful today",
    "i am terrified of what comes next",
    "why would anyone do that, i am furious",
    " ".join(["this sentence is long enough to be truncated by the tokenizer"] * 15),
]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_export_folder_is_a_complete_hf_artifact(exported_dir: Path, smoke_ckpt: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "export_info.json",
        "onnx/model.onnx",
        "onnx/model.int8.onnx",
    ):
        assert (exported_dir / name).is_file(), name
    config = json.loads((exported_dir / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["label2id"] == {name: i for i, name in enumerate(LABELS)}

    info = json.loads((exported_dir / "export_info.json").read_text())
    assert info["labels"] == LABELS and info["max_length"] == 64
    assert info["source_checkpoint"]["sha256"] == export.sha256(smoke_ckpt)
    ckpt = torch.load(smoke_ckpt, map_location="cpu", weights_only=True)
    assert info["source_checkpoint"]["epoch"] == ckpt["epoch"]
    # The val metrics are those logged at the checkpoint's epoch in the run's own metrics.csv.
    log = next(smoke_ckpt.parents[1].glob("logs/version_*/metrics.csv")).read_text().splitlines()
    rows = [dict(zip(log[0].split(","), line.split(","), strict=True)) for line in log[1:]]
    logged = next(
        float(r["val/f1_macro"]) for r in rows if r["val/f1_macro"] and int(r["epoch"]) == ckpt["epoch"]
    )
    assert info["metrics"]["validation"]["val/f1_macro"] == pytest.approx(logged)
    parity = {name: v["parity"] for name, v in info["variants"].items()}
    assert set(parity) == {"fp32", "onnx", "int8"}
    for name in ("fp32", "onnx"):
        assert parity[name]["max_abs_logit_diff"] <= export.MAX_LOGIT_DIFF
        assert parity[name]["label_agreement"] == 1.0
    assert parity["int8"]["label_agreement"] >= export.MIN_INT8_AGREEMENT

    card = (exported_dir / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert "val/f1_macro" in card and "max_epochs: 15" in card and "package:emotions_pl/sample" in card
    assert info["source_checkpoint"]["sha256"] in card


def test_variants_match_the_checkpoint(exported_dir: Path, smoke_ckpt: Path, tokenizer) -> None:
    from emotions_pl.model import EmotionClassifier

    model = EmotionClassifier.load_from_checkpoint(smoke_ckpt, map_location="cpu", weights_only=True).eval()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        expected = model(enc["input_ids"], enc["attention_mask"]).numpy()
    for variant in ("fp32", "onnx"):
        got = load_predictor(str(exported_dir), variant).predict_logits(TEXTS)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    int8 = load_predictor(str(exported_dir), "int8")
    assert np.abs(int8.predict_logits(TEXTS) - expected).max() < 0.5
    results = int8.predict(TEXTS)
    assert [r["label"] for r in results] == [LABELS[k] for k in int8.predict_proba(TEXTS).argmax(-1)]
    assert all(
        abs(sum(r["scores"].values()) - 1) < 1e-5 and r["score"] == max(r["scores"].values()) for r in results
    )


def test_predictor_explains_a_missing_variant(exported_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportFolderError, match=r"export_info\.json"):
        load_predictor(str(tmp_path))
    with pytest.raises(ExportFolderError, match="unknown variant"):
        load_predictor(str(exported_dir), "fp16")


def test_pipeline_works_offline(exported_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classify = pipeline("text-classification", model=str(exported_dir), top_k=None)
    expected = load_predictor(str(exported_dir)).predict(TEXTS)
    for got, want in zip(classify(TEXTS, truncation=True), expected, strict=True):
        assert {d["label"]: d["score"] for d in got} == pytest.approx(want["scores"], abs=1e-5)


def test_checkpoint_metrics_read_val_and_test_logs(tmp_path: Path) -> None:
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt_path.parent.mkdir()
    ckpt_path.write_bytes(b"")
    fit, test = tmp_path / "logs" / "version_0", tmp_path / "logs" / "version_1"
    fit.mkdir(parents=True)
    test.mkdir()
    (fit / "metrics.csv").write_text(
        "epoch,step,train/loss,val/acc,val/f1_macro\n0,4,1.2,,\n0,9,,0.5,0.4\n1,19,,0.7,0.6\n2,29,,0.8,0.75\n"
    )
    (test / "config.yaml").write_text(f"ckpt_path: {ckpt_path}\n")
    (test / "metrics.csv").write_text("epoch,step,test/acc,test/f1_macro\n0,0,0.69,0.58\n")
    metrics = export.checkpoint_metrics({"epoch": 1, "global_step": 20}, ckpt_path, tmp_path)
    assert metrics["validation"]["val/acc"] == 0.7 and metrics["validation"]["val/f1_macro"] == 0.6
    assert metrics["test"]["test/acc"] == 0.69 and metrics["test"]["test/f1_macro"] == 0.58


def test_publish_replaces_the_previous_folder(tmp_path: Path) -> None:
    output, new = tmp_path / "model", tmp_path / ".model.tmp-x"
    output.mkdir()
    (output / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    export.publish(new, output)
    assert [p.name for p in output.iterdir()] == ["new.txt"]
    assert _leftovers(output) == []


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A tiny model's forward passes are dominated by thread hand-offs on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_failed_parity_keeps_the_previous_artifact(
    exported_dir: Path, smoke_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "model"
    shutil.copytree(exported_dir, output)
    before = (output / "export_info.json").read_bytes()
    with pytest.raises(export.ExportError, match="fp32 export failed its parity check"):
        export.export(smoke_ckpt, output, onnx=True, max_diff=-1.0)  # no logit diff can pass
    assert "FAILED" in capsys.readouterr().out
    assert (output / "export_info.json").read_bytes() == before
    assert _leftovers(output) == []
    fresh = tmp_path / "fresh"
    with pytest.raises(export.ExportError):
        export.export(smoke_ckpt, fresh, onnx=True, max_diff=-1.0)
    assert not fresh.exists() and _leftovers(fresh) == []


def test_a_swallowed_interrupt_still_stops_the_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal whose KeyboardInterrupt Python swallowed (it landed in a __del__) must still stop."""
    output, tmp = tmp_path / "model", tmp_path / ".model.tmp"
    output.mkdir()
    (output / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    monkeypatch.setattr(export, "_stop_requested", export.threading.Event())
    with pytest.raises(KeyboardInterrupt):
        with contextlib.suppress(KeyboardInterrupt):  # what an exception raised in __del__ amounts to
            export._stop_on_signal(signal.SIGTERM, None)
        export.publish(tmp, output)
    assert [p.name for p in output.iterdir()] == ["old"]
    assert (tmp / "new").exists()


def test_interrupted_export_leaves_nothing_behind(
    exported_dir: Path, smoke_ckpt: Path, tmp_path: Path
) -> None:
    output = tmp_path / "model"
    shutil.copytree(exported_dir, output)
    before = (output / "export_info.json").read_bytes()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emotions_pl",
            "export",
            "--ckpt",
            str(smoke_ckpt),
            "--output",
            str(output),
            "--int8",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not _leftovers(output) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _leftovers(output), "the export never started writing its temporary folder"
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr
    assert (output / "export_info.json").read_bytes() == before
    assert _leftovers(output) == []
