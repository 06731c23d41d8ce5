"""Layer pruning: the strategies' indices, the pruned folder's layers and weights, and the whole path
prune -> fit -> export (parity) -> transformers.pipeline -> a real server, on the tiny model."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors import safe_open

from emotions_pl.artifact import checkpoint, prune
from emotions_pl.artifact.predictor import Predictor
from emotions_pl.errors import UserError
from emotions_pl.schema import LABELS
from helpers import Server, run_here

TEXTS = [
    "i feel so happy and grateful today",
    "i am terrified of what comes next",
    "why would anyone do that, i am furious",
    " ".join(["a long text that the tokenizer truncates at the model's max length"] * 12),
]


@pytest.mark.parametrize(
    ("n", "keep", "strategy", "expected"),
    [
        (6, 4, "bottom", [0, 1, 2, 3]),
        (6, 4, "top", [2, 3, 4, 5]),
        (6, 4, "alternate", [0, 2, 3, 5]),
        (6, 3, "alternate", [0, 3, 5]),  # 2.5 rounds up
        (6, 5, "alternate", [0, 1, 3, 4, 5]),  # 1.25, 2.5, 3.75
        (6, 2, "alternate", [0, 5]),
        (6, 1, "alternate", [5]),
        (2, 1, "bottom", [0]),
        (2, 1, "top", [1]),
    ],
)
def test_strategies_name_their_layers(n: int, keep: int, strategy: str, expected: list[int]) -> None:
    assert prune.kept_layers(n, keep, strategy) == expected


@pytest.mark.parametrize("keep", [0, 6, 7])
def test_keep_outside_1_to_n_minus_1_is_a_user_error(keep: int) -> None:
    with pytest.raises(UserError, match=f"--keep-layers {keep}: "):
        prune.kept_layers(6, keep, "bottom")


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.get_submodule(prune.layer_list(model))


def _by_hand(source: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """The same pruning by another route: swap the source's own layer list for the kept layers."""
    import copy

    model = copy.deepcopy(source)
    parent, _, name = prune.layer_list(model).rpartition(".")
    setattr(model.get_submodule(parent), name, torch.nn.ModuleList(_layers(model)[i] for i in keep))
    return model.eval()


@pytest.fixture(scope="module")
def six_layer_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A random-init 6-layer BERT classifier folder (MiniLM's depth, tiny widths), MiniLM's tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from emotions_pl.train.backbone import label_config

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "bert",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        **label_config(LABELS),
    )
    folder = tmp_path_factory.mktemp("bert6") / "model"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("strategy", prune.STRATEGIES)
def test_a_folder_prunes_to_the_chosen_layers(six_layer_dir: Path, tmp_path: Path, strategy: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = AutoModelForSequenceClassification.from_pretrained(six_layer_dir).eval()
    output = tmp_path / "pruned"
    record = prune.prune(output, 4, strategy, model_dir=six_layer_dir)
    keep = prune.kept_layers(6, 4, strategy)
    assert record == {
        "source": str(six_layer_dir.resolve()),
        "source_layers": 6,
        "kept_layers": keep,
        "strategy": strategy,
        "source_pruning": None,
    }
    config = json.loads((output / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["pruning"] == record
    with safe_open(output / "model.safetensors", "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    layer_keys = {k.split(".")[3] for k in saved if k.startswith("bert.encoder.layer.")}
    assert layer_keys == {"0", "1", "2", "3"}
    reference = source.state_dict()
    for key, value in saved.items():
        parts = key.split(".")
        if key.startswith("bert.encoder.layer."):
            parts[3] = str(keep[int(parts[3])])  # new index -> the source's
        assert torch.equal(value, reference[".".join(parts)]), key
    assert (
        any(k.startswith("classifier.") for k in saved) and "bert.embeddings.word_embeddings.weight" in saved
    )

    pruned = AutoModelForSequenceClassification.from_pretrained(output).eval()
    assert len(_layers(pruned)) == 4
    inputs = AutoTokenizer.from_pretrained(output)(
        TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.inference_mode():
        got = pruned(**inputs).logits
        want = _by_hand(source, keep)(**inputs).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_pruning_a_pruned_folder_keeps_its_history(six_layer_dir: Path, tmp_path: Path) -> None:
    first = prune.prune(tmp_path / "p4", 4, "alternate", model_dir=six_layer_dir)
    second = prune.prune(tmp_path / "p2", 2, "top", model_dir=tmp_path / "p4")
    assert second["source_layers"] == 4 and second["kept_layers"] == [2, 3]
    assert second["source_pruning"] == first


def test_a_base_model_without_a_head_prunes_as_a_base_model(minilm_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    from emotions_pl.train.backbone import build_backbone

    record = prune.prune(tmp_path / "minilm2", 2, "top", model_dir=minilm_dir)
    assert record["source_layers"] == 6 and record["kept_layers"] == [4, 5]
    config = json.loads((tmp_path / "minilm2" / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["num_hidden_layers"] == 2
    source = AutoModel.from_pretrained(minilm_dir).state_dict()
    with safe_open(tmp_path / "minilm2" / "model.safetensors", "pt") as f:
        assert torch.equal(
            f.get_tensor("encoder.layer.0.output.dense.weight"), source["encoder.layer.4.output.dense.weight"]
        )
        assert not any(k.startswith("classifier.") for k in f.keys())  # noqa: SIM118
    model = build_backbone(str(tmp_path / "minilm2"), LABELS, None)  # what `fit` builds: a fresh head
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == len(LABELS) and len(_layers(model)) == 2


@pytest.fixture(scope="module")
def pruned_dir(smoke_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny smoke checkpoint (2 layers) pruned to its top layer through the CLI."""
    output = tmp_path_factory.mktemp("pruned") / "tiny-top1"
    proc = run_here(
        "prune", "--ckpt", str(smoke_ckpt), "--keep-layers", "1", "--strategy", "top", "--output", str(output)
    )
    assert f"kept layers [1] of 2 (top) -> {output}" in proc.stdout
    return output


def test_the_pruned_checkpoint_has_fewer_layers_and_the_source_weights(
    pruned_dir: Path, smoke_ckpt: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    fit = checkpoint.load(smoke_ckpt)
    config = json.loads((pruned_dir / "config.json").read_text())
    assert config["n_layers"] == 1 and config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["pruning"]["source"] == str(smoke_ckpt.resolve())
    assert config["pruning"]["kept_layers"] == [1] and config["pruning"]["source_layers"] == 2
    with safe_open(pruned_dir / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[3] for k in keys if k.startswith("distilbert.transformer.layer.")} == {"0"}
    pruned = AutoModelForSequenceClassification.from_pretrained(pruned_dir).eval()
    source_layer = _layers(fit.model)[1].state_dict()
    for name, value in _layers(pruned)[0].state_dict().items():
        assert torch.equal(value, source_layer[name]), name
    for name in ("distilbert.embeddings.word_embeddings.weight", "classifier.weight", "pre_classifier.bias"):
        assert torch.equal(pruned.state_dict()[name], fit.model.state_dict()[name]), name
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in fit.model.parameters())


def test_transformers_pipeline_loads_the_pruned_folder(pruned_dir: Path, smoke_ckpt: Path) -> None:
    from transformers import pipeline

    fit = checkpoint.load(smoke_ckpt)
    by_hand = _by_hand(fit.model, [1])
    want = Predictor.from_model(by_hand, fit.tokenizer, fit.labels, fit.max_length).predict_proba(TEXTS)
    classify = pipeline("text-classification", model=str(pruned_dir), top_k=None)
    got = classify(TEXTS, truncation=True)  # the saved tokenizer cuts at the checkpoint's max_length
    for row, probs in zip(got, want, strict=True):
        scores = {d["label"]: d["score"] for d in row}
        assert list(sorted(scores)) == sorted(LABELS)
        np.testing.assert_allclose([scores[name] for name in LABELS], probs, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep-layers", "0"], "error: --keep-layers 0: keep at least 1 layer."),
        (["--keep-layers", "2"], "error: --keep-layers 2: the source has 2 layers; keep between 1 and 1."),
    ],
)
def test_bad_keep_layers_exit_2_with_one_line(
    smoke_ckpt: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    output = tmp_path / "never"
    proc = run_here("prune", "--ckpt", str(smoke_ckpt), *args, "--output", str(output), expect=2)
    assert proc.stderr.strip() == message
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_it_replaces_only_a_folder_it_wrote(exported_dir: Path, smoke_ckpt: Path, pruned_dir: Path) -> None:
    before = sorted(p.name for p in exported_dir.iterdir())
    proc = run_here(
        "prune", "--ckpt", str(smoke_ckpt), "--keep-layers", "1", "--output", str(exported_dir), expect=2
    )
    assert (
        proc.stderr.strip()
        == f"error: {exported_dir} exists and was not written by `prune`; choose another --output."
    )
    assert sorted(p.name for p in exported_dir.iterdir()) == before
    again = prune.prune(pruned_dir, 1, "top", ckpt=smoke_ckpt)  # a prune folder is replaced in place
    assert again["kept_layers"] == [1] and not list(pruned_dir.parent.glob(f".{pruned_dir.name}.*"))


@pytest.fixture(scope="module")
def pruned_export(pruned_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pruned folder fine-tuned by a normal `fit` (one epoch of the smoke recipe), then exported."""
    run_dir = tmp_path_factory.mktemp("pruned_fit")
    run_here(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--model.model_name_or_path",
        str(pruned_dir),
        "--model.random_init_config",
        "null",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
    )
    output = tmp_path_factory.mktemp("pruned_export") / "emotions-pruned"
    run_here(
        "export", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--output", str(output), "--int8"
    )
    return output


@pytest.mark.slow
def test_the_fine_tuned_pruned_model_exports_with_parity(pruned_export: Path, pruned_dir: Path) -> None:
    from transformers import pipeline

    info = json.loads((pruned_export / "export_info.json").read_text())
    assert info["base_model"] == str(pruned_dir)
    assert info["pruning"] == json.loads((pruned_dir / "config.json").read_text())["pruning"]
    assert set(info["variants"]) == {"fp32", "onnx", "int8"}
    for name in ("fp32", "onnx"):
        assert info["variants"][name]["parity"]["label_agreement"] == 1.0
        assert info["variants"][name]["parity"]["max_abs_logit_diff"] <= 1e-3
    assert json.loads((pruned_export / "config.json").read_text())["n_layers"] == 1
    want = Predictor.from_folder(pruned_export).predict_proba(TEXTS)
    got = pipeline("text-classification", model=str(pruned_export), top_k=None)(TEXTS, truncation=True)
    for row, probs in zip(got, want, strict=True):
        scores = {d["label"]: d["score"] for d in row}
        np.testing.assert_allclose([scores[name] for name in LABELS], probs, atol=1e-5)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_a_real_server_answers_with_the_pruned_model(
    pruned_export: Path, tmp_path: Path, variant: str
) -> None:
    want = Predictor.from_folder(pruned_export, variant).predict(TEXTS)
    server = Server(pruned_export, tmp_path / "server.log", "--variant", variant)
    try:
        got = httpx.post(f"{server.url}/predict", json={"texts": TEXTS}, timeout=60).json()
        one = httpx.post(f"{server.url}/predict", json={"text": TEXTS[0]}, timeout=60).json()
        info = httpx.get(f"{server.url}/info", timeout=30).json()["model"]
    finally:
        server.stop(signal.SIGTERM)
    assert [g["label"] for g in got] == [w["label"] for w in want] and one["label"] == want[0]["label"]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(
            [g["scores"][n] for n in LABELS], [w["scores"][n] for n in LABELS], atol=1e-5
        )
    assert info["variant"] == variant and info["export"]["pruning"]["kept_layers"] == [1]
