"""Stage 4, monitor: evaluation, drift and robustness reports over a checkpoint, an export or logs."""
