"""A 2-node launch on loopback: Lightning's own multi-node DDP, as on a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, free_port

pytestmark = [pytest.mark.slow]


def test_two_nodes_on_loopback_finish_and_write_the_checkpoint_once(tmp_path: Path) -> None:
    """Lightning's own multi-node DDP (gloo): 2 "nodes" x 1 process, NODE_RANK 0 and 1, on 127.0.0.1."""
    port = str(free_port())
    args = [
        sys.executable, "-m", "emotions_pl", "fit", "--config", "configs/experiment/smoke.yaml",
        "--trainer", "configs/trainer/multinode.yaml", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            args,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank)},
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}"
    assert "checkpoint: best" in outputs[0] and "checkpoint:" not in outputs[1]  # rank 0 reports, once
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3  # each of the 2 ranks sees 24 of the 48 texts: 3 batches an epoch
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(
        [Path(json.loads((tmp_path / "run.json").read_text())["checkpoints"]["best"]).name, "last.ckpt"]
    )
