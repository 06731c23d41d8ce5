"""Weight averaging (``configs/callbacks/ema.yaml``, Lightning's ``EMAWeightAveraging``): the model is
configured once, the checkpoint's ``state_dict`` holds the average and ``export`` ships it. Exact resume
with averaging on is in test_resume.py."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from emotions_pl.train import model as model_module
from emotions_pl.train.model import EmotionClassifier
from helpers import run_here

TINY = {"model_type": "distilbert", "dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2}


def test_averaging_configures_the_model_once(minilm_dir: Path, tokenizer, monkeypatch) -> None:
    # EMAWeightAveraging.setup() calls configure_model to build its copy, then the Trainer calls it again.
    applied: list[object] = []
    real_apply = model_module.cls_only.apply
    monkeypatch.setattr(model_module.cls_only, "apply", lambda m: applied.append(m) or real_apply(m))
    torch.manual_seed(0)
    tiny = EmotionClassifier(str(minilm_dir), random_init_config=TINY, learning_rate=1e-3)
    enc = tokenizer(["i feel so happy today", "i am scared of the dark"], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([1, 4])}
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EMAWeightAveraging(decay=0.5)],
    )
    trainer.fit(tiny, train_dataloaders=DataLoader([batch] * 3, batch_size=None))
    assert applied == [tiny.model]


def test_the_checkpoint_and_the_export_hold_the_averaged_weights(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_here(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.callbacks+=configs/callbacks/ema.yaml",
        "--trainer.callbacks.decay=0.8",
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    assert averaged.keys() == raw.keys()
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(averaged[k], raw[k])]
    assert len(moved) > len(raw) // 2  # 12 steps at decay 0.8: the average lags the raw weights

    output = tmp_path / "export"
    run_here("export", "--ckpt", str(ckpt), "--output", str(output))
    shipped = load_file(output / "model.safetensors")
    for name, tensor in shipped.items():
        assert torch.equal(tensor, averaged[f"model.{name}"]), name
    assert any(not torch.equal(tensor, raw[f"model.{name}"]) for name, tensor in shipped.items())
