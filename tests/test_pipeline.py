"""The ``data`` and ``evaluate`` commands, and the DVC pipeline for real on a tiny variant.

The pipeline tests (slow, integration) copy the repository (git-tracked and new files; no data, no
cache), switch params.yaml to the smoke model and the shipped sample, and run: ``dvc repro`` end to
end with every output parsed, a second repro that runs nothing, a learning-rate change through
``dvc exp run -S`` that re-runs train and what follows but not data, and ``dvc push``/``dvc pull``
through the default local remote and a GCS emulator on 127.0.0.1, where a fresh ``git clone`` pulls
byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from emotions_pl import metrics as metrics_module
from emotions_pl.schema import LABELS
from helpers import REPO, free_port, run_main

STAGES = ("data", "train", "evaluate", "export")
# The tiny variant. The recipe is the committed experiment's config files (the params `train` tracks in
# dvc.yaml): the copy swaps in the smoke run's random-init model and sets a few values in the others.
# Every key set must already exist in its file.
EXPERIMENT = "configs/experiment/offline.yaml"
MODEL_PARAMS = "configs/model/minilm.yaml"  # replaced by configs/model/tiny.yaml in the copy
DISTILL_PARAMS = "configs/distill/default.yaml"
TINY_LR = 5e-3  # tiny.yaml's learning rate
TINY = {
    "params.yaml": {"dataset.source": "src/emotions_pl/sample", "export.onnx": False, "export.int8": False},
    "configs/trainer/default.yaml": {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "log_every_n_steps": 1,
    },
    "configs/data/emotion_local.yaml": {"batch_size": 8},
}
BUCKET = "emotions-pl-dvc"  # the bucket of the committed gs:// remote


def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def dvc(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return run(sys.executable, "-m", "dvc", *args, cwd=cwd, env=env)


def git(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return run("git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args, cwd=cwd, env=env)


def set_params(path: Path, values: dict[str, object]) -> None:
    params = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        assert leaf in node, f"{path.name} has no {dotted!r}; update TINY in this test"
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def skipped_stages(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Stage '{stage}' didn't change, skipping" in output}


def out_hashes(repo: Path) -> dict[str, str]:
    """sha256 of every file under every cached output named in dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    hashes = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            root = repo / out["path"]
            for file in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                hashes[str(file.relative_to(repo))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def test_data_command_writes_validated_splits_and_report(sample_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "data" / "emotion"
    argv = ["--source", str(sample_dir), "--output", str(out), "--report", str(tmp_path / "r.json")]
    assert run_main("data", *argv) == 0
    first = {f.name: f.read_bytes() for f in out.iterdir()}
    assert sorted(first) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["train"]["rows"] == 48 and report["train"]["labels"] == dict.fromkeys(LABELS, 8)
    assert report["test"]["words"]["min"] >= 1
    assert report["overlap"] == {"validation_in_train": 0, "test_in_train": 0}
    assert "train 48, validation 24, test 24" in capsys.readouterr().out
    # a second run replaces the folder with the same bytes: DVC sees the same hash
    assert run_main("data", "--source", str(sample_dir), "--output", str(out)) == 0
    assert {f.name: f.read_bytes() for f in out.iterdir()} == first
    assert [p.name for p in out.parent.iterdir()] == ["emotion"]  # no temporary folders left behind


def test_data_command_names_the_bad_row_and_writes_nothing(sample_dir: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "source"
    shutil.copytree(sample_dir, source)
    lines = (source / "validation.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"text": "so happy", "label": 9})
    (source / "validation.jsonl").write_text("\n".join(lines) + "\n")
    assert run_main("data", "--source", str(source), "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "validation.jsonl" in err and "row 3" in err and "label 9" in err
    assert not (tmp_path / "out").exists()
    assert run_main("data", "--source", str(source), "--output", str(source)) == 2
    assert "is the source folder itself" in capsys.readouterr().err


def test_report_matches_torchmetrics() -> None:
    generator = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 6, (300,), generator=generator)
    logits = torch.randn(300, 6, generator=generator)
    logits[:, 5] -= 3  # a class that is rarely predicted
    probs = logits.softmax(-1)
    report = metrics_module.report(probs.double().numpy(), y_true.numpy(), LABELS)
    metrics, table, cm = report["metrics"], report["per_class"], report["confusion"]
    f1 = multiclass_f1_score(probs, y_true, 6, average=None)
    assert metrics["test/acc"] == pytest.approx(
        float(multiclass_accuracy(probs, y_true, 6, average="micro")), abs=1e-6
    )
    assert metrics["test/f1_macro"] == pytest.approx(float(f1.mean()), abs=1e-6)
    assert metrics["test/f1_weighted"] == pytest.approx(
        float((f1 * torch.bincount(y_true, minlength=6)).sum() / 300), abs=1e-6
    )
    assert table["label"] == LABELS
    assert table["f1"] == pytest.approx(f1.tolist(), abs=1e-6)
    assert [metrics[f"test/f1/{name}"] for name in LABELS] == pytest.approx(f1.tolist(), abs=1e-6)
    precision = multiclass_precision(probs, y_true, 6, average=None)
    assert table["precision"] == pytest.approx(precision.tolist(), abs=1e-6)
    assert metrics["test/precision_macro"] == pytest.approx(float(precision.mean()), abs=1e-6)
    recall = multiclass_recall(probs, y_true, 6, average=None)
    assert table["recall"] == pytest.approx(recall.tolist(), abs=1e-6)
    assert metrics["test/recall_macro"] == pytest.approx(float(recall.mean()), abs=1e-6)
    assert cm.sum() == 300 and cm.sum(1).tolist() == table["support"]
    assert cm.flatten().tolist() == torch.bincount(y_true * 6 + probs.argmax(1), minlength=36).tolist()
    assert metrics["test/loss"] == pytest.approx(
        float(torch.nn.functional.nll_loss(probs.log(), y_true)), abs=1e-6
    )
    # the same numbers whatever the prefix, and scores() on label indices agrees on accuracy
    assert (
        metrics_module.report(probs, y_true, LABELS, prefix="val/")["metrics"]["val/acc"]
        == metrics["test/acc"]
    )
    scores = metrics_module.scores(probs.argmax(1), y_true, 6)
    assert set(scores) == {"acc", "f1_macro", "precision_macro", "recall_macro", "f1_weighted"}
    assert scores["acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert scores["f1_macro"] == pytest.approx(metrics["test/f1_macro"], abs=1e-6)


def evaluate_args(ckpt: Path, data: Path, out: Path) -> list[str]:
    return ["evaluate", "--ckpt", str(ckpt), "--data", str(data), "--output", str(out)]


def test_evaluate_command_on_a_real_checkpoint(
    smoke_run: Path, smoke_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    assert run_main(*evaluate_args(smoke_ckpt, sample_dir, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = ("acc", "f1_macro", "precision_macro", "recall_macro", "f1_weighted", "loss")
    with_intervals = ("test/acc", "test/f1_macro", *(f"test/f1/{x}" for x in LABELS))
    intervals = {f"{k}_ci_{end}" for k in with_intervals for end in ("low", "high")}
    assert set(metrics) == {*(f"test/{n}" for n in names), *(f"test/f1/{x}" for x in LABELS), *intervals}
    for key in with_intervals:  # each score inside its seeded bootstrap interval
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 24 and set(predictions["predicted"]) <= set(LABELS)
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(
        metrics["test/acc"], abs=1e-6
    )
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["label"].tolist() == LABELS and per_class["support"].sum() == 24
    assert per_class["f1"].tolist() == pytest.approx([metrics[f"test/f1/{x}"] for x in LABELS], abs=1e-5)
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # the curves are the run summary's, in the columns dvc.yaml plots
    run = json.loads((smoke_run / "run.json").read_text())
    val = pd.read_csv(out / "curves" / "val.csv")
    assert list(val.columns) == ["epoch", "step", "val_loss", "val_acc", "val_f1_macro"]
    assert val["epoch"].tolist() == [e["epoch"] for e in run["epochs"]] == list(range(len(val)))
    assert val["val_f1_macro"].tolist() == pytest.approx([e["val/f1_macro"] for e in run["epochs"]])
    train = pd.read_csv(out / "curves" / "train.csv")
    assert list(train.columns) == ["step", "train_loss"] and len(train) == len(run["train_loss"]) > len(val)
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png",
        "curves",
        "metrics.json",
        "per_class.csv",
        "per_class.json",
        "per_class.md",
        "predictions.csv",
    ]


def test_evaluate_command_reports_bad_inputs(
    smoke_ckpt: Path, sample_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "reports"
    assert run_main(*evaluate_args(tmp_path / "nope.ckpt", sample_dir, out)) == 2
    assert "nope.ckpt" in capsys.readouterr().err
    alone = tmp_path / "alone" / "last.ckpt"  # a checkpoint without its run folder: no curves to write
    alone.parent.mkdir()
    shutil.copy(smoke_ckpt, alone)
    assert run_main(*evaluate_args(alone, sample_dir, out)) == 2
    err = capsys.readouterr().err
    assert str(alone) in err and "no run.json" in err
    assert run_main(*evaluate_args(smoke_ckpt, tmp_path, out)) == 2
    assert "'test' split" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        **os.environ,
        # the stages call `python`: this interpreter, and the copy's own sources
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "EMOTIONS_CACHE_DIR": str(tmp_path_factory.mktemp("pipeline_cache")),
        # gcsfs otherwise first asks the gRPC storage-control API for the bucket layout (60 s timeout)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """A fresh git repository holding the project's files, the tiny params, and a first `dvc repro`."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    files = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO, env=env)
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    assert (repo / ".dvc" / "config").is_file() and (repo / "dvc.yaml").is_file()
    env["PYTHONPATH"] = str(repo / "src")
    # the tiny switch edits exactly the files the experiment composes and `train` tracks as params
    assert yaml.safe_load((repo / "params.yaml").read_text())["experiment"] == EXPERIMENT
    experiment = yaml.safe_load((repo / EXPERIMENT).read_text())
    composed = {f"configs/{v.removeprefix('../')}" for v in experiment.values() if str(v).endswith(".yaml")}
    assert experiment["seed_everything"] == 42  # the seed is a value of the tracked experiment file
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train"]
    tracked = {next(iter(p)) for p in stage["params"] if isinstance(p, dict)}
    # plus the distillation group, which configs/experiment/distill.yaml composes on top of the same files
    expected = {MODEL_PARAMS, *TINY} - {"params.yaml"}
    assert composed == tracked - {DISTILL_PARAMS, EXPERIMENT} == expected, (composed, tracked)
    shutil.copy(repo / "configs" / "model" / "tiny.yaml", repo / MODEL_PARAMS)
    for name, values in TINY.items():
        set_params(repo / name, values)
    git("init", "-q", cwd=repo, env=env)
    git("add", "-A", cwd=repo, env=env)
    git("commit", "-qm", "tiny variant", cwd=repo, env=env)
    output = dvc("repro", cwd=repo, env=env)
    assert ran_stages(output) == set(STAGES), output
    git("add", "-A", cwd=repo, env=env)
    git("commit", "-qm", "tiny run", cwd=repo, env=env)
    return repo


@pytest.mark.slow
@pytest.mark.integration
def test_repro_writes_every_output(repo: Path, env: dict[str, str]) -> None:
    report = json.loads((repo / "reports" / "data.json").read_text())
    for split, rows in {"train": 48, "validation": 24, "test": 24}.items():
        lines = (repo / "data" / "emotion" / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == rows == report[split]["rows"]
        assert {json.loads(line)["label"] for line in lines} == set(range(len(LABELS)))
        assert sum(report[split]["labels"].values()) == rows
        chars = report[split]["chars"]
        assert 0 < chars["min"] <= chars["mean"] <= chars["max"]

    # metrics agree with torchmetrics on the predictions they came from
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    predictions = pd.read_csv(repo / "reports" / "predictions.csv")
    assert len(predictions) == 24
    actual = torch.tensor([LABELS.index(x) for x in predictions["actual"]])
    predicted = torch.tensor([LABELS.index(x) for x in predictions["predicted"]])
    accuracy = float(multiclass_accuracy(predicted, actual, len(LABELS), average="micro"))
    assert metrics["test/acc"] == pytest.approx(accuracy, abs=1e-5)
    f1_macro = float(multiclass_f1_score(predicted, actual, len(LABELS)))
    assert metrics["test/f1_macro"] == pytest.approx(f1_macro, abs=1e-5)
    per_class = pd.read_csv(repo / "reports" / "per_class.csv")
    assert per_class["label"].tolist() == LABELS and per_class["support"].sum() == 24
    assert per_class["f1"].round(5).tolist() == [round(metrics[f"test/f1/{x}"], 5) for x in LABELS]
    assert len(json.loads((repo / "reports" / "per_class.json").read_text())) == 6
    assert (repo / "reports" / "per_class.md").read_text().count("\n") == 8
    assert (repo / "reports" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # curves come from the run summary; best.ckpt is the epoch with the best validation F1
    train = pd.read_csv(repo / "reports" / "curves" / "train.csv")
    val = pd.read_csv(repo / "reports" / "curves" / "val.csv")
    assert list(train.columns) == ["step", "train_loss"] and train["step"].is_monotonic_increasing
    assert val["epoch"].tolist() == [0, 1]
    run = json.loads((repo / "runs" / "pipeline" / "run.json").read_text())
    assert val["val_f1_macro"].tolist() == pytest.approx([e["val/f1_macro"] for e in run["epochs"]])
    ckpt = torch.load(repo / "runs" / "pipeline" / "best.ckpt", map_location="cpu", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    # run.json keeps 6 decimals, the checkpoint the full score
    assert float(state["best_model_score"]) == pytest.approx(val["val_f1_macro"].max(), abs=1e-6)
    assert ckpt["epoch"] == val.loc[val["val_f1_macro"].idxmax(), "epoch"]
    assert ckpt["hyper_parameters"]["learning_rate"] == TINY_LR
    assert ckpt["hyper_parameters"]["random_init_config"]["model_type"] == "distilbert"  # the tiny model
    info = json.loads((repo / "models" / "emotions" / "export_info.json").read_text())
    assert info["labels"] == LABELS

    # DVC reads the metrics and plots; nothing changed, so nothing runs
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo, env=env))
    assert shown[""]["data"]["reports/metrics.json"]["data"] == metrics
    dvc("plots", "show", "-o", str(repo / "plots_html"), cwd=repo, env=env)
    page = (repo / "plots_html" / "index.html").read_text()
    for field in ("train_loss", "val_f1_macro", '"f1"', "predicted"):
        assert field in page
    assert "Data and pipelines are up to date" in dvc("status", cwd=repo, env=env)
    output = dvc("repro", cwd=repo, env=env)
    assert skipped_stages(output) == set(STAGES) and not ran_stages(output), output


@pytest.mark.slow
@pytest.mark.integration
def test_learning_rate_change_reruns_train_and_after(repo: Path, env: dict[str, str]) -> None:
    params = repo / MODEL_PARAMS
    original = params.read_text()
    set_params(params, {"learning_rate": 2e-3})
    status = json.loads(dvc("status", "--json", cwd=repo, env=env))
    assert set(status) == {"train"}, status  # the only stage whose own inputs changed
    params.write_text(original)

    output = dvc("exp", "run", "-S", f"{MODEL_PARAMS}:learning_rate=0.002", cwd=repo, env=env)
    assert ran_stages(output) == {"train", "evaluate", "export"}, output
    assert skipped_stages(output) == {"data"}, output
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"][MODEL_PARAMS]["learning_rate"] == 0.002
    ckpt = torch.load(repo / "runs" / "pipeline" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["learning_rate"] == 0.002

    params_diff = json.loads(dvc("params", "diff", "--json", cwd=repo, env=env))
    lr_diff = params_diff[MODEL_PARAMS]["learning_rate"]
    assert (lr_diff["old"], lr_diff["new"]) == (TINY_LR, 0.002)
    metrics_diff = json.loads(dvc("metrics", "diff", "--all", "--json", cwd=repo, env=env))
    new = json.loads((repo / "reports" / "metrics.json").read_text())
    assert {k: v["new"] for k, v in metrics_diff["reports/metrics.json"].items()} == new
    experiments = json.loads(dvc("exp", "show", "--json", cwd=repo, env=env))
    assert "0.002" in json.dumps(experiments)


@pytest.fixture
def gcs_endpoint(tmp_path: Path) -> Iterator[str]:
    """gcp-storage-emulator on 127.0.0.1 with the remote's bucket, in memory."""
    port = free_port()
    log = (tmp_path / "emulator.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--default-bucket",
            BUCKET,
            "--in-memory",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                started = proc.poll() is None and time.monotonic() < deadline
                assert started, (tmp_path / "emulator.log").read_text()
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def use_emulator(repo: Path, endpoint: str, env: dict[str, str]) -> None:
    """Point the committed gs:// remote at the emulator in the untracked config.local, as a user would."""
    dvc("remote", "modify", "--local", "gcs", "endpointurl", endpoint, cwd=repo, env=env)
    dvc("remote", "modify", "--local", "gcs", "allow_anonymous_login", "true", cwd=repo, env=env)


@pytest.mark.slow
@pytest.mark.integration
def test_push_and_pull_through_local_and_gcs_remotes(
    repo: Path, env: dict[str, str], gcs_endpoint: str, tmp_path: Path
) -> None:
    git("add", "-A", cwd=repo, env=env)
    git("commit", "-qm", "current outputs", "--allow-empty", cwd=repo, env=env)
    expected = out_hashes(repo)
    assert any(name.startswith("models/emotions/") for name in expected)

    remotes = dvc("remote", "list", cwd=repo, env=env)
    assert "gs://" in remotes
    dvc("push", cwd=repo, env=env)  # the default remote: a local folder, no set-up
    default = dvc("remote", "default", cwd=repo, env=env).strip()
    url = dvc("config", f"remote.{default}.url", cwd=repo, env=env).strip()
    local_store = (repo / ".dvc" / url).resolve()
    assert local_store.parent == repo.parent  # a folder beside the clone
    assert any(p.is_file() for p in (local_store / "files" / "md5").rglob("*"))

    use_emulator(repo, gcs_endpoint, env)
    dvc("push", "-r", "gcs", cwd=repo, env=env)

    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path, env=env)
    assert not (clone / "data").exists() and not (clone / "models").exists()
    use_emulator(clone, gcs_endpoint, env)
    dvc("pull", "-r", "gcs", cwd=clone, env=env)
    assert out_hashes(clone) == expected
    status = dvc("status", cwd=clone, env={**env, "PYTHONPATH": str(clone / "src")})
    assert "Data and pipelines are up to date" in status
