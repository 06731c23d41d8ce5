"""pytorch-lightning 2.6.6: the first epoch after a resume draws the batches the checkpoint says.

Two upstream bugs, both open (remove this module when a release fixes them):

- **Lightning-AI/pytorch-lightning#20550** (fix proposed in #21765): ``configure_optimizers`` reading
  ``trainer.estimated_stepping_batches`` (ours does, for the warm-up schedule) builds the train loader
  before the checkpoint is restored; the fit loop then keeps that loader and never loads the saved
  data-loader state, so a mid-epoch resume restarts its epoch from the first batch.
- **#21938** (fixes proposed in #21941, #21960): the train iterator is created before the sampler's
  epoch is set, so the first epoch after a resume draws epoch 0's order.

``setup_data`` is wrapped: after Lightning's own, when the loop was restored (its epoch counter is
ahead of the sampler's, or loader states from the checkpoint are waiting), set the sampler's epoch to
the loop's, load the saved loader states and create the iterator again, in that order. A run that
was not resumed is untouched.
"""

from __future__ import annotations

from typing import Any

from lightning_fabric.utilities.data import _set_sampler_epoch
from pytorch_lightning.loops.fit_loop import _FitLoop

_setup_data = _FitLoop.setup_data


def _sampler_epoch(loader: Any) -> int | None:
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if hasattr(sampler, "epoch"):
            return sampler.epoch
    return None


def setup_data(self: _FitLoop) -> None:
    states = list(self._combined_loader_states_to_load)  # Lightning's own call may consume them
    _setup_data(self)
    combined, fetcher = self._combined_loader, self._data_fetcher
    if combined is None or fetcher is None:
        return
    epoch = self.epoch_progress.current.processed
    behind = any(_sampler_epoch(loader) not in (None, epoch) for loader in combined.flattened)
    pending = bool(self._combined_loader_states_to_load)  # the #20550 case: never loaded
    if not (behind or pending):
        return
    for loader in combined.flattened:
        _set_sampler_epoch(loader, epoch)
    if self.restarting and states:
        combined._load_state_dicts(states)
    self._combined_loader_states_to_load = []
    iter(fetcher)


_FitLoop.setup_data = setup_data
