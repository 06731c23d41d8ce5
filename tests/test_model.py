"""The LightningModule on a tiny random-init model with the real tokenizer."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from emotions_pl.patches import cls_only
from emotions_pl.schema import LABELS
from emotions_pl.train.backbone import layer_depth
from emotions_pl.train.model import EmotionClassifier

TINY = {"model_type": "distilbert", "dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2}


@pytest.fixture
def tiny(minilm_dir) -> EmotionClassifier:
    torch.manual_seed(0)
    return EmotionClassifier(str(minilm_dir), random_init_config=TINY, learning_rate=1e-3)


@pytest.fixture
def batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["i feel so happy today", "i am scared of the dark", "i feel sad and alone", "what a surprise"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor([1, 4, 0, 5])}


def _configure(model: EmotionClassifier) -> dict:
    """``configure_optimizers`` as Lightning calls it, for a run of 100 optimizer steps."""

    class FakeTrainer:
        estimated_stepping_batches = 100

    model.trainer = FakeTrainer()  # type: ignore[assignment]
    return model.configure_optimizers()


def test_labels_and_shapes(tiny: EmotionClassifier, batch, tokenizer) -> None:
    assert tiny.model.config.id2label == dict(enumerate(LABELS))
    assert tiny.model.config.label2id["surprise"] == 5
    assert tiny.model.config.vocab_size == len(tokenizer)
    logits = tiny(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (4, 6)


def test_loss_falls_on_a_fixed_batch(tiny: EmotionClassifier, batch) -> None:
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=5e-3)
    losses: list[float] = []
    while len(losses) < 30 and not (losses and losses[-1] < 0.5 * losses[0]):  # stop once it has halved
        loss = tiny._loss(tiny(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_metrics_on_hand_made_predictions(tiny: EmotionClassifier) -> None:
    # 6 samples: predictions right for sadness x2, joy, love; anger->fear; surprise->joy.
    target = torch.tensor([0, 0, 1, 2, 3, 5])
    predicted = torch.tensor([0, 0, 1, 2, 4, 1])
    logits = torch.nn.functional.one_hot(predicted, 6).float()
    tiny.test_metrics.update(logits, target)
    tiny.test_f1_per_class.update(logits, target)
    values = tiny.test_metrics.compute()
    assert set(values) == {
        f"test/{k}" for k in ("acc", "f1_macro", "precision_macro", "recall_macro", "f1_weighted")
    }
    assert values["test/acc"].item() == pytest.approx(4 / 6)
    per_class = tiny.test_f1_per_class.compute().tolist()
    # joy: tp=1 fp=1 fn=0 -> f1=2/3; anger: 0; fear: 0 (fp only, no support); surprise: 0
    assert per_class == pytest.approx([1.0, 2 / 3, 1.0, 0.0, 0.0, 0.0])
    assert values["test/f1_macro"].item() == pytest.approx(sum(per_class) / 6)
    # precision: sadness 2/2, joy 1/2, love 1/1, the rest 0; recall: sadness, joy, love 1, the rest 0
    assert values["test/precision_macro"].item() == pytest.approx(2.5 / 6)
    assert values["test/recall_macro"].item() == pytest.approx(3 / 6)
    # weighted by support (2, 1, 1, 1, 0, 1 of 6): (2 * 1 + 2/3 + 1) / 6
    assert values["test/f1_weighted"].item() == pytest.approx((3 + 2 / 3) / 6)
    assert set(tiny.val_metrics) == {k.replace("test/", "val/") for k in values}


def test_no_weight_decay_on_bias_and_layernorm(tiny: EmotionClassifier) -> None:
    names = dict(tiny.named_parameters())
    decayed, plain = [], []
    for name in names:
        (plain if name.endswith(("bias", "layer_norm.weight", "LayerNorm.weight")) else decayed).append(name)
    assert plain and decayed
    config = _configure(tiny)
    groups = config["optimizer"].param_groups
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == {id(names[n]) for n in plain}
    scheduler = config["lr_scheduler"]["scheduler"]
    assert scheduler.get_last_lr()[0] == 0.0  # warm-up starts at zero
    for _ in range(10):
        config["optimizer"].step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3)  # 10% of 100 steps: peak
    for _ in range(90):
        config["optimizer"].step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_predict_step_returns_text_label_score_and_scores(tiny: EmotionClassifier, batch) -> None:
    rows = tiny.predict_step({**batch, "text": ["a", "b", "c", "d"]}, 0)
    assert [r["text"] for r in rows] == ["a", "b", "c", "d"]
    for row in rows:
        assert set(row) == {"text", "label", "score", "scores"}
        assert list(row["scores"]) == LABELS
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["score"] == max(row["scores"].values())
        assert row["scores"][row["label"]] == row["score"]


def test_class_weights_must_match_labels(minilm_dir) -> None:
    with pytest.raises(ValueError, match="class_weights has 2 values for 6 labels"):
        EmotionClassifier(str(minilm_dir), random_init_config=TINY, class_weights=[1.0, 2.0])


def test_pretrained_backbone_trains_with_dropout_on(minilm_dir) -> None:
    """from_pretrained returns eval mode; fine-tuning must run with dropout (train mode)."""
    model = EmotionClassifier(str(minilm_dir))
    assert all(m.training for m in model.model.modules())
    assert model.model.config.num_labels == 6


@pytest.mark.parametrize(
    ("name", "depth"),
    [
        ("model.bert.embeddings.word_embeddings.weight", 0),
        ("model.bert.encoder.layer.0.attention.self.query.weight", 1),
        ("model.distilbert.transformer.layer.1.ffn.lin1.bias", 2),
        ("model.bert.pooler.dense.weight", 3),
        ("model.classifier.weight", 3),
    ],
)
def test_layer_depth(name: str, depth: int) -> None:
    assert layer_depth(name, num_layers=2) == depth


def test_layer_lr_decay_scales_each_block(minilm_dir) -> None:
    """Peak lr: head at the base rate, block i of L at lr * decay**(L - i), embeddings one step lower."""
    model = EmotionClassifier(
        str(minilm_dir), random_init_config=TINY, learning_rate=1e-3, layer_lr_decay=0.5
    )
    names = {id(p): n for n, p in model.named_parameters()}
    groups = _configure(model)["optimizer"].param_groups
    lr_of = {names[id(p)]: g["initial_lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == len(names)  # every parameter in exactly one group
    assert lr_of["model.classifier.weight"] == pytest.approx(1e-3)
    assert lr_of["model.distilbert.transformer.layer.1.ffn.lin1.weight"] == pytest.approx(5e-4)
    assert lr_of["model.distilbert.transformer.layer.0.ffn.lin1.bias"] == pytest.approx(2.5e-4)
    assert lr_of["model.distilbert.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-4)


def test_no_layer_lr_decay_keeps_two_groups(tiny: EmotionClassifier) -> None:
    groups = _configure(tiny)["optimizer"].param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert {g["initial_lr"] for g in groups} == {1e-3}


def test_layer_lr_decay_out_of_range_is_refused(minilm_dir) -> None:
    with pytest.raises(ValueError, match="layer_lr_decay must be in"):
        EmotionClassifier(str(minilm_dir), random_init_config=TINY, layer_lr_decay=1.5)


def test_compile_keeps_checkpoint_keys(minilm_dir) -> None:
    """Compiling in place must not rename weights (``_orig_mod.``): checkpoints load either way."""
    plain = EmotionClassifier(str(minilm_dir), random_init_config=TINY)
    compiled = EmotionClassifier(str(minilm_dir), random_init_config=TINY, compile=True)
    compiled.configure_model()
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict())


TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", [TINY, TINY_BERT], ids=["distilbert", "bert"])
def test_cls_only_last_layer_keeps_logits_and_gradients(
    minilm_dir, batch, arch: dict, attn: str, mode: str
) -> None:
    """Same function of the same weights, on a padded batch: logits and every gradient agree.

    In train mode dropout is on and both draw from the same seed: the [CLS]-only layer must take the
    very masks the full layer takes, or the logits differ by far more than rounding.
    """
    torch.manual_seed(0)
    full = EmotionClassifier(str(minilm_dir), random_init_config=arch, cls_only_last_layer=False)
    fast = EmotionClassifier(str(minilm_dir), random_init_config=arch)
    fast.load_state_dict(full.state_dict())
    for m in (full, fast):
        m.model.set_attn_implementation(attn)
        m.configure_model()  # where a Trainer applies it
        m.train(mode == "train")
    layer = getattr(fast.model.base_model, "encoder" if arch is TINY_BERT else "transformer").layer[-1]
    assert layer.forward.__func__ is not type(layer).forward, "the last layer was not patched"
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    outputs = []
    for m in (full, fast):
        torch.manual_seed(1)
        logits = m(batch["input_ids"], batch["attention_mask"])
        m._loss(logits, batch["labels"]).backward()
        outputs.append((logits, {n: p.grad for n, p in m.named_parameters()}))
    (logits_full, grads_full), (logits_fast, grads_fast) = outputs
    torch.testing.assert_close(logits_fast, logits_full, atol=1e-6, rtol=1e-5)
    assert grads_fast.keys() == grads_full.keys()
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_fast[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    assert list(fast.state_dict()) == list(full.state_dict())


def test_cls_only_leaves_other_architectures_alone(minilm_dir) -> None:
    roberta = {**TINY_BERT, "model_type": "roberta"}
    model = EmotionClassifier(str(minilm_dir), random_init_config=roberta)
    model.configure_model()
    layer = model.model.roberta.encoder.layer[-1]
    assert layer.forward.__func__ is type(layer).forward


def test_a_trainer_fit_runs_the_cls_only_layer(tiny: EmotionClassifier, batch) -> None:
    layer = tiny.model.distilbert.transformer.layer[-1]
    assert layer.forward.__func__ is type(layer).forward  # outside a Trainer: the plain HF model
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(tiny, train_dataloaders=DataLoader([batch], batch_size=None))
    assert layer.forward.__func__ is cls_only._distilbert_block
