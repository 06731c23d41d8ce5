"""A callback that holds a fit where a test wants to ``kill -9`` it (``tests/test_resume.py``).

At the chosen point it writes its process id to ``marker`` and sleeps; the test waits for the file and
sends SIGKILL from outside, so the fit dies as a crashed one does: no hook, no cleanup, no final save.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class PauseAt(pl.Callback):
    def __init__(self, marker: str, step: int | None = None, epoch: int | None = None) -> None:
        self.marker, self.step, self.epoch = Path(marker), step, epoch

    def _hold(self) -> None:
        self.marker.write_text(str(os.getpid()))
        time.sleep(600)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self._hold()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            self._hold()
