"""W&B logger (offline, never a prompt), one sweep trial as the agent runs it, the confusion matrix,
TensorBoard, and the profiler presets -- all through the real CLI on the smoke experiment."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from emotions_pl.plots import confusion_figure, png_bytes
from emotions_pl.schema import LABELS
from emotions_pl.train.tracking import EmotionsWandbLogger, resolve_mode
from helpers import REPO, run_here

SWEEP = REPO / "configs" / "sweep.yaml"
SMOKE = "configs/experiment/smoke.yaml"


@pytest.fixture
def wandb_env(tmp_path: Path) -> dict[str, str]:
    """Offline W&B with its caches and artifact staging inside the test's folder, not the user's home."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
    }


@pytest.mark.parametrize(
    ("mode", "env", "expected"),
    [
        (None, {}, "offline"),
        (None, {"WANDB_API_KEY": "k"}, "online"),
        (None, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
        (None, {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}, "disabled"),
        (None, {"WANDB_MODE": "online"}, "offline"),  # online without a key would prompt: refuse
        (None, {"WANDB_MODE": "dryrun"}, "offline"),
        ("offline", {"WANDB_API_KEY": "k", "WANDB_MODE": "online"}, "offline"),
        ("online", {}, "offline"),
        ("online", {"WANDB_API_KEY": "k"}, "online"),
    ],
)
def test_resolve_mode_is_online_only_with_a_key(mode, env, expected) -> None:
    assert resolve_mode(mode, env) == expected


def test_resolve_mode_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match=r"'sometimes'.*WANDB_MODE"):
        resolve_mode(None, {"WANDB_MODE": "sometimes"})


@pytest.fixture
def own_environ() -> Iterator[None]:
    """A W&B run started in this process leaves its service running and named in os.environ
    (WANDB_SERVICE, for child processes): stop it and restore the environment, or the next test's
    subprocess would log through this process's service (and into its working directory)."""
    saved = os.environ.copy()
    yield
    import wandb

    wandb.teardown()
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.usefixtures("own_environ")
def test_logger_without_key_is_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_env: dict[str, str]
) -> None:
    """No key and no WANDB_MODE: the run is written offline under save_dir, for `wandb sync` later."""
    for name, value in wandb_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = EmotionsWandbLogger(save_dir=str(tmp_path / "run"), project="p")
    assert logger.mode == "offline"
    assert logger.save_dir == str(tmp_path / "run")
    assert (tmp_path / "run").is_dir()
    run = logger.experiment
    try:
        assert run.offline
        assert Path(run.dir).is_relative_to(tmp_path / "run" / "wandb")
    finally:
        run.finish()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_confusion_matrix_image() -> None:
    counts = np.array([[5, 1], [0, 4]])
    figure = confusion_figure(counts, ["joy", "fear"], "val")
    assert figure.axes[0].get_title() == "val · accuracy 0.900"
    assert [t.get_text() for t in figure.axes[0].texts] == ["5", "1", "0", "4"]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["joy", "fear"]
    png = png_bytes(figure)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_bytes(confusion_figure(counts, ["joy", "fear"], "val")) == png  # no timestamp: same bytes


def trial_argv(spec: dict, values: dict) -> list[str]:
    """The command line a W&B agent runs for one trial (Agent._command_run, with wandb's own helpers)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(spec["command"]))
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars["interpreter"] = [sys.executable]  # the agent uses `python` from PATH
    sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def pick(parameter: dict) -> float | int:
    """A value the sweep could choose and the smoke config does not already have."""
    if "values" in parameter:
        return parameter["values"][-1]
    return math.sqrt(parameter["min"] * parameter["max"])


def test_sweep_definition_is_a_valid_wandb_sweep() -> None:
    from wandb.sdk.launch.sweeps.utils import load_sweep_config

    spec = load_sweep_config(str(SWEEP))
    assert spec["method"] in {"grid", "random", "bayes"}
    assert spec["metric"] == {"name": "val/f1_macro", "goal": "maximize"}
    assert set(spec["parameters"]) == {
        "model.learning_rate",
        "data.batch_size",
        "model.weight_decay",
        "model.warmup_ratio",
    }
    for name, parameter in spec["parameters"].items():
        assert "values" in parameter or {"min", "max"} <= set(parameter), name
    argv = trial_argv(spec, {k: pick(p) for k, p in spec["parameters"].items()})
    assert argv[:5] == ["/usr/bin/env", sys.executable, "-m", "emotions_pl", "fit"]
    assert "configs/experiment/offline.yaml" in argv and "configs/logger/wandb.yaml" in argv


def test_sweep_trial_runs_offline(tmp_path: Path, wandb_env: dict[str, str], sample_dir: Path) -> None:
    """One trial's command, built from configs/sweep.yaml as the agent builds it, on the smoke experiment."""
    spec = yaml.safe_load(SWEEP.read_text())
    values = {k: pick(p) for k, p in spec["parameters"].items()}
    argv = [SMOKE if a == "configs/experiment/offline.yaml" else a for a in trial_argv(spec, values)]
    argv.append("--trainer.max_epochs=1")
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the agent runs from the repository root
    run_id = "trial0001"
    proc = subprocess.run(
        argv,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **wandb_env, "WANDB_RUN_ID": run_id},
    )
    assert proc.returncode == 0, proc.stderr[-5000:]

    run = tmp_path / "runs" / "sweeps" / "local" / run_id  # its own folder, from the agent's run id
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["learning_rate"] == pytest.approx(values["model.learning_rate"])
    assert config["model"]["weight_decay"] == values["model.weight_decay"]
    assert config["model"]["warmup_ratio"] == values["model.warmup_ratio"]
    assert config["data"]["batch_size"] == values["data.batch_size"]
    assert config["trainer"]["logger"]["class_path"] == "emotions_pl.train.tracking.EmotionsWandbLogger"

    (offline,) = (run / "wandb").glob(f"offline-run-*-{run_id}")
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    uploaded = yaml.safe_load((offline / "files" / "lightning_config.yaml").read_text())
    assert uploaded["model"]["learning_rate"] == pytest.approx(values["model.learning_rate"])
    assert list((offline / "files" / "media" / "images" / "val").glob("confusion_matrix_*.png"))
    assert f"model-{run_id}".encode() in (offline / f"run-{run_id}.wandb").read_bytes()  # the artifact

    matrix = json.loads((run / "confusion_matrix" / "val.json").read_text())
    n_val = sum(1 for line in (sample_dir / "validation.jsonl").read_text().splitlines() if line.strip())
    assert matrix["labels"] == LABELS
    assert sum(map(sum, matrix["matrix"])) == n_val
    assert (run / "confusion_matrix" / "val.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_logger_and_test_confusion_matrix(
    tmp_path: Path, smoke_ckpt: Path, sample_dir: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ckpt = (
        tmp_path / "last.ckpt"
    )  # a copy: `test` records its metrics in the run.json of its checkpoint's run
    shutil.copy(smoke_ckpt, ckpt)
    run_here(
        "test",
        "--config",
        SMOKE,
        "--trainer.logger",
        "configs/logger/tensorboard.yaml",
        "--trainer.callbacks+=emotions_pl.train.tracking.ConfusionMatrixLogger",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        "--ckpt_path",
        str(ckpt),
    )
    (events,) = (tmp_path / "logs" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert "test/confusion_matrix" in accumulator.Tags()["images"]
    matrix = json.loads((tmp_path / "confusion_matrix" / "test.json").read_text())
    n_test = sum(1 for line in (sample_dir / "test.jsonl").read_text().splitlines() if line.strip())
    assert matrix["stage"] == "test"
    assert sum(map(sum, matrix["matrix"])) == n_test


PRESETS = {"simple": "run_training_batch", "advanced": "Profile stats for", "pytorch": "Self CPU"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_profiler_preset_writes_its_report(tmp_path: Path, preset: str) -> None:
    run_here(
        "fit",
        "--config",
        SMOKE,
        "--trainer.profiler",
        f"configs/profiler/{preset}.yaml",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    )
    logs = tmp_path / "logs" / "version_0"  # the run's log folder: dirpath is left null in the presets
    assert PRESETS[preset] in (logs / f"fit-profile-{preset}.txt").read_text()
    if preset == "pytorch":
        assert list(logs.glob("*training_step*.pt.trace.json"))
