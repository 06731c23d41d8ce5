"""Stage 1, train: data module, classifier, LightningCLI, callbacks, tracking and the ``data`` stage."""
