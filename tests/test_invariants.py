"""The maths a refactor must not change: the classifier's logits and gradients against numbers recorded
before the package was split into stages, and the predictor against a plain Hugging Face forward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from emotions_pl.artifact import checkpoint
from emotions_pl.artifact.predictor import Predictor
from emotions_pl.sources import resolve
from emotions_pl.train.model import EmotionClassifier
from helpers import REPO

GOLDEN = Path(__file__).parent / "golden" / "tiny_classifier.json"
TEXTS = [
    "i feel so alone tonight",
    "i am thrilled that we won",
    "i feel loved",
    "i am furious about it, really furious",
]


def test_classifier_logits_loss_and_gradients_match_the_recorded_ones() -> None:
    """tests/golden/tiny_classifier.json was written by the pre-split code (commit a1ae457) from this
    same recipe: seed 0 for the random init, seed 1 for the training step's dropout."""
    golden = json.loads(GOLDEN.read_text())
    cfg = yaml.safe_load((REPO / "configs/model/tiny.yaml").read_text())
    torch.manual_seed(0)
    model = EmotionClassifier(
        cfg["model_name_or_path"], random_init_config=cfg["random_init_config"], cls_only_last_layer=False
    )
    enc = AutoTokenizer.from_pretrained(resolve(cfg["model_name_or_path"]))(
        TEXTS, padding=True, return_tensors="pt"
    )
    model.eval()
    with torch.no_grad():
        logits = model(enc["input_ids"], enc["attention_mask"])
    np.testing.assert_allclose(logits.numpy(), golden["eval_logits"], atol=1e-6, rtol=0)
    model.train()
    torch.manual_seed(1)
    batch = {**{k: enc[k] for k in ("input_ids", "attention_mask")}, "labels": torch.tensor([0, 1, 2, 3])}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert float(loss) == pytest.approx(golden["train_loss"], abs=1e-6)
    norms = {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None}
    assert norms.keys() == golden["grad_norms"].keys()
    for name, norm in norms.items():
        assert norm == pytest.approx(golden["grad_norms"][name], abs=1e-6), name


def test_predictor_probabilities_equal_a_plain_forward(exported_dir: Path, smoke_ckpt: Path) -> None:
    """Length-sorted chunks, from the export folder or the checkpoint, give what one text at a time
    through transformers gives."""
    texts = [*TEXTS, "ok", " ".join(["i feel overwhelmed"] * 60)]  # one longer than max_length
    info = json.loads((exported_dir / "export_info.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(exported_dir)
    model = AutoModelForSequenceClassification.from_pretrained(exported_dir).eval()
    plain = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=info["max_length"], return_tensors="pt")
            plain.append(model(**enc).logits.softmax(-1)[0].numpy())
    from_folder = Predictor.from_folder(exported_dir, "fp32").predict_proba(texts, batch_size=4)
    from_ckpt = checkpoint.load(smoke_ckpt).predictor().predict_proba(texts, batch_size=4)
    np.testing.assert_allclose(from_folder, np.array(plain), atol=1e-6, rtol=0)
    np.testing.assert_allclose(from_ckpt, np.array(plain), atol=1e-6, rtol=0)
