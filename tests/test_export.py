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

from emotions_pl import files
from emotions_pl.artifact import checkpoint, export
from emotions_pl.artifact.predictor import ExportFolderError, Predictor
from emotions_pl.files import sha256
from emotions_pl.schema import LABELS
from emotions_pl.train import summary
from helpers import REPO

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
    assert info["source_checkpoint"]["sha256"] == sha256(smoke_ckpt)
    ckpt = torch.load(smoke_ckpt, map_location="cpu", weights_only=True)
    assert info["source_checkpoint"]["epoch"] == ckpt["epoch"]
    # The val metrics (from run.json) are those the logger wrote at the checkpoint's epoch in metrics.csv.
    log = next(smoke_ckpt.parents[1].glob("logs/version_*/metrics.csv")).read_text().splitlines()
    rows = [dict(zip(log[0].split(","), line.split(","), strict=True)) for line in log[1:]]
    logged = next(r for r in rows if r["val/f1_macro"] and int(r["epoch"]) == ckpt["epoch"])
    validation = info["metrics"]["validation"]
    assert validation["epoch"] == ckpt["epoch"]
    for name in ("val/loss", "val/acc", "val/f1_macro", "val/precision_macro", "val/recall_macro"):
        assert validation[name] == pytest.approx(float(logged[name]), abs=1e-6), name
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
    from emotions_pl.train.model import EmotionClassifier

    model = EmotionClassifier.load_from_checkpoint(smoke_ckpt, map_location="cpu", weights_only=True).eval()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        expected = model(enc["input_ids"], enc["attention_mask"]).numpy()
    for variant in ("fp32", "onnx"):
        got = Predictor.from_folder(exported_dir, variant).predict_logits(TEXTS)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    int8 = Predictor.from_folder(exported_dir, "int8")
    assert np.abs(int8.predict_logits(TEXTS) - expected).max() < 0.5
    results = int8.predict(TEXTS)
    assert [r["label"] for r in results] == [LABELS[k] for k in int8.predict_proba(TEXTS).argmax(-1)]
    assert all(
        abs(sum(r["scores"].values()) - 1) < 1e-5 and r["score"] == max(r["scores"].values()) for r in results
    )


def test_predictor_explains_a_missing_variant(exported_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportFolderError, match=r"export_info\.json"):
        Predictor.from_folder(tmp_path)
    with pytest.raises(ExportFolderError, match="unknown variant"):
        Predictor.from_folder(exported_dir, "fp16")


def test_pipeline_works_offline(exported_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classify = pipeline("text-classification", model=str(exported_dir), top_k=None)
    expected = Predictor.from_folder(exported_dir).predict(TEXTS)
    for got, want in zip(classify(TEXTS, truncation=True), expected, strict=True):
        assert {d["label"]: d["score"] for d in got} == pytest.approx(want["scores"], abs=1e-5)


def write_run(run: Path, ckpt_path: Path, other: Path, epoch: int = 1) -> None:
    """A run.json as fit writes it, then tested on ``ckpt_path`` and on another checkpoint; the
    validation of ``epoch`` is ``{"step": 20, "val/acc": 0.7, "val/f1_macro": 0.6}``."""
    epochs = [
        {"epoch": epoch - 1, "step": 10, "val/acc": 0.5, "val/f1_macro": 0.4},
        {"epoch": epoch, "step": 20, "val/acc": 0.7, "val/f1_macro": 0.6},
        {"epoch": epoch + 1, "step": 30, "val/acc": 0.8, "val/f1_macro": 0.75},
    ]
    tests = [
        {"ckpt_path": str(other), "metrics": {"test/acc": 0.9}},
        {"ckpt_path": str(ckpt_path), "metrics": {"test/acc": 0.69, "test/f1_macro": 0.58}},
    ]
    (run / summary.RUN_FILE).write_text(json.dumps({"epochs": epochs, "tests": tests}))


def test_checkpoint_metrics_read_the_run_summary(tmp_path: Path) -> None:
    """Validation metrics of the checkpoint's epoch; test metrics only of a `test` run on that very file."""
    ckpt_path, other = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "best.ckpt"
    ckpt_path.parent.mkdir()
    ckpt_path.write_bytes(b"")
    other.write_bytes(b"")
    write_run(tmp_path, ckpt_path, other)
    assert summary.find(ckpt_path) == tmp_path / "run.json"  # one folder up from checkpoints/
    run = summary.read(summary.find(ckpt_path))
    metrics = summary.checkpoint_metrics(run, ckpt_path, epoch=1)
    assert metrics["validation"] == {"epoch": 1, "step": 20, "val/acc": 0.7, "val/f1_macro": 0.6}
    assert metrics["test"] == {"test/acc": 0.69, "test/f1_macro": 0.58}
    # the same file by another path (a symlink, a relative path) is the same checkpoint
    (tmp_path / "link.ckpt").symlink_to(ckpt_path)
    assert summary.checkpoint_metrics(run, tmp_path / "link.ckpt", 1)["test"]["test/acc"] == 0.69
    # a checkpoint of an epoch that was not validated, and never tested: nothing to report
    untested = tmp_path / "checkpoints" / "epoch07.ckpt"
    untested.write_bytes(b"")
    assert summary.checkpoint_metrics(run, untested, epoch=7) == {}
    assert summary.checkpoint_metrics({}, ckpt_path, epoch=1) == {}
    assert summary.find(tmp_path / "elsewhere" / "x" / "last.ckpt") is None
    assert summary.read(None) == {}


def test_export_metrics_come_from_the_checkpoints_run(smoke_ckpt: Path, tmp_path: Path) -> None:
    """A fit checkpoint copied with a run.json beside it: its epoch's validation and its own test."""
    ckpt_path = tmp_path / "run" / "last.ckpt"
    ckpt_path.parent.mkdir()
    shutil.copy(smoke_ckpt, ckpt_path)
    epoch = torch.load(smoke_ckpt, map_location="cpu", weights_only=True)["epoch"]
    write_run(ckpt_path.parent, ckpt_path, smoke_ckpt, epoch)
    fit = checkpoint.load(ckpt_path)
    assert fit.epoch == epoch and fit.labels == LABELS and fit.max_length == 64
    assert fit.metrics() == {
        "validation": {"epoch": epoch, "step": 20, "val/acc": 0.7, "val/f1_macro": 0.6},
        "test": {"test/acc": 0.69, "test/f1_macro": 0.58},
    }
    (ckpt_path.parent / "run.json").unlink()
    assert checkpoint.load(ckpt_path).metrics() == {}  # no run summary: no metrics, not an error


def two_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A published folder holding ``old.txt`` and a finished staging folder holding ``new.txt``."""
    output = tmp_path / "model"
    output.mkdir()
    (output / "old.txt").write_text("old")
    new = files.staging_dir(output)
    (new / "new.txt").write_text("new")
    return output, new


def test_publish_dir_replaces_the_previous_folder(tmp_path: Path) -> None:
    output, new = two_folders(tmp_path)
    assert files.publish_dir(new, output) is True
    assert [p.name for p in output.iterdir()] == ["new.txt"]
    assert not new.exists() and _leftovers(output) == []
    fresh = tmp_path / "fresh"
    staged = files.staging_dir(fresh)
    (staged / "a").write_text("a")
    assert files.publish_dir(staged, fresh) is True and [p.name for p in fresh.iterdir()] == ["a"]


def test_publish_dir_keeps_an_existing_folder_when_asked(tmp_path: Path) -> None:
    output, new = two_folders(tmp_path)
    assert files.publish_dir(new, output, replace=False) is False  # a cache entry another process wrote
    assert [p.name for p in output.iterdir()] == ["old.txt"]
    assert not new.exists() and _leftovers(output) == []


def test_publish_dir_keeps_the_previous_folder_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, new = two_folders(tmp_path)
    rename = os.rename

    def failing(src, dst) -> None:
        if Path(src) == new:
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="No space left"):
        files.publish_dir(new, output)
    monkeypatch.undo()
    assert [p.name for p in output.iterdir()] == ["old.txt"]  # moved back into place
    assert [p.name for p in new.iterdir()] == ["new.txt"]  # the caller removes its staging folder
    assert _leftovers(output) == [new.name]


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
    output, tmp = two_folders(tmp_path)
    monkeypatch.setattr(export, "_stop_requested", export.threading.Event())
    with pytest.raises(KeyboardInterrupt):
        with contextlib.suppress(KeyboardInterrupt):  # what an exception raised in __del__ amounts to
            export._stop_on_signal(signal.SIGTERM, None)
        files.publish_dir(tmp, output, stop_requested=export._stop_requested)
    assert [p.name for p in output.iterdir()] == ["old.txt"]
    assert (tmp / "new.txt").exists()


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
