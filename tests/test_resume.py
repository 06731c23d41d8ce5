"""Exact resume after a crash: a real fit killed with SIGKILL, once between epochs and once mid-epoch,
then resumed from its checkpoint, ends with the uninterrupted fit's metrics and weights.

The fits are the smoke experiment (tiny random-init DistilBERT, dropout 0.1, the shipped sample: 6
batches an epoch), 3 epochs, with the mid-epoch checkpoint of ``configs/callbacks/mid_epoch.yaml`` every
4 steps; once plain and once with weight averaging (``configs/callbacks/ema.yaml``), whose average and
update count travel in the checkpoint too. ``helpers.pause.PauseAt`` holds the fit at the chosen point
and the test kills it from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, run_module

STEPS_PER_EPOCH = 6  # 48 sample rows, batch 8
EVERY = 4
FIT = (
    "fit",
    "--config",
    "configs/experiment/smoke.yaml",
    "--trainer.max_epochs",
    "3",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.callbacks+=configs/callbacks/mid_epoch.yaml",
    f"--trainer.callbacks.every_n_train_steps={EVERY}",
)
# Weight averaging on: a short memory, so that the average differs from the raw weights within 18 steps.
AVERAGED = ("--trainer.callbacks+=configs/callbacks/ema.yaml", "--trainer.callbacks.decay=0.8")
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def fit_killed(run_dir: Path, flags: tuple[str, ...], **where: int) -> None:
    """The fit with ``flags``, held by ``PauseAt(**where)`` and killed there with SIGKILL."""
    marker = run_dir.parent / f"{run_dir.name}.paused"
    pause = ["--trainer.callbacks+=helpers.pause.PauseAt", f"--trainer.callbacks.marker={marker}"]
    pause += [f"--trainer.callbacks.{k}={v}" for k, v in where.items()]
    command = [sys.executable, "-m", "emotions_pl", *FIT, *flags, "--trainer.default_root_dir", str(run_dir)]
    command += pause
    proc = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the fit never reached its pause point"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's weights: ``state_dict`` (the average, with averaging on) and the raw ones."""
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {key: saved[key] for key in ("state_dict", "current_model_state") if key in saved}


@pytest.fixture(scope="module", params=[(), AVERAGED], ids=["plain", "averaged"])
def uninterrupted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The uninterrupted fit's folder and its extra flags."""
    run_dir = tmp_path_factory.mktemp("resume") / "whole"
    run_module(*FIT, *request.param, "--trainer.default_root_dir", str(run_dir))
    return run_dir, request.param


def assert_same_run(resumed: Path, whole: Path) -> None:
    a, b = summary(resumed), summary(whole)
    assert [e["epoch"] for e in a["epochs"]] == [0, 1, 2]
    for mine, theirs in zip(a["epochs"], b["epochs"], strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert [s for s, _ in a["train_loss"]] == [s for s, _ in b["train_loss"]]
    assert [x for _, x in a["train_loss"]] == pytest.approx([x for _, x in b["train_loss"]], abs=1e-6)
    mine, theirs = weights(resumed), weights(whole)
    assert mine.keys() == theirs.keys()
    for key, state in theirs.items():
        assert max(float((mine[key][k] - state[k]).abs().max()) for k in state) <= 1e-6, key


@pytest.mark.slow  # about 4 min here: ten tiny fits, each a fresh process
@pytest.mark.parametrize(
    ("where", "checkpoint", "step"),
    [
        ({"epoch": 2}, "last.ckpt", 2 * STEPS_PER_EPOCH),  # between epochs: epoch 1's end checkpoint
        ({"step": 9}, "last-step.ckpt", 8),  # mid-epoch: step 8 of 18, the 3rd batch of epoch 1
    ],
)
def test_a_fit_killed_and_resumed_ends_as_the_uninterrupted_one(
    uninterrupted: tuple, tmp_path: Path, where: dict, checkpoint: str, step: int
) -> None:
    whole, flags = uninterrupted
    run_dir = tmp_path / "run"
    fit_killed(run_dir, flags, **where)
    ckpt = run_dir / "checkpoints" / checkpoint
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] == step
    assert {"torch", "numpy", "python", "sampler"} <= saved["callbacks"]["RandomState"].keys()
    assert saved["callbacks"]["RandomState"]["sampler"] == {
        "seed": 42,
        "epoch": step // STEPS_PER_EPOCH - (step % STEPS_PER_EPOCH == 0),
    }
    assert ("current_model_state" in saved) == bool(flags)
    run_module(*FIT, *flags, "--trainer.default_root_dir", str(run_dir), "--ckpt_path", str(ckpt))
    assert_same_run(run_dir, whole)
