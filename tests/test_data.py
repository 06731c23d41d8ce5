"""Data loading, validation, tokenization cache and length grouping, on real files and the real tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from emotions_pl import sources
from emotions_pl.schema import LABELS
from emotions_pl.tables import DataValidationError, load_splits, read_split
from emotions_pl.train.data import EmotionDataModule


def write_split(folder: Path, split: str, rows: list[dict], fmt: str = "jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def sample_rows(sample_dir: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (sample_dir / f"{split}.jsonl").read_text().splitlines()]


def copy_sample(sample_dir: Path, dest: Path, fmt: str = "jsonl", names: bool = False) -> Path:
    for split in ("train", "validation", "test"):
        rows = sample_rows(sample_dir, split)
        if names:
            rows = [{"text": r["text"], "label": LABELS[r["label"]]} for r in rows]
        write_split(dest, split, rows, fmt)
    return dest


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_each_format_loads_the_same_rows(sample_dir: Path, tmp_path: Path, fmt: str) -> None:
    folder = copy_sample(sample_dir, tmp_path / fmt, fmt)
    tables = load_splits(str(folder), LABELS)
    expected = sample_rows(sample_dir, "train")
    assert tables["train"]["text"].tolist() == [r["text"] for r in expected]
    assert tables["train"]["label"].tolist() == [r["label"] for r in expected]
    assert {len(tables[s]) for s in ("validation", "test")} == {24}


def test_label_names_are_mapped_to_indices(sample_dir: Path, tmp_path: Path) -> None:
    folder = copy_sample(sample_dir, tmp_path / "names", "csv", names=True)
    tables = load_splits(str(folder), LABELS)
    assert tables["test"]["label"].tolist() == [r["label"] for r in sample_rows(sample_dir, "test")]


def test_read_split_takes_a_file_or_a_folder(sample_dir: Path, tmp_path: Path) -> None:
    """What evaluate and robustness read: a folder's test split by default, any split, or one file."""
    folder = copy_sample(sample_dir, tmp_path / "names", "parquet", names=True)
    expected = sample_rows(sample_dir, "test")
    texts, labels = read_split(folder, LABELS)
    assert texts == [r["text"] for r in expected] and labels == [r["label"] for r in expected]
    texts, labels = read_split(folder, LABELS, split="validation")
    assert labels == [r["label"] for r in sample_rows(sample_dir, "validation")]
    assert read_split(sample_dir / "train.jsonl", LABELS)[0] == [
        r["text"] for r in sample_rows(sample_dir, "train")
    ]
    with pytest.raises(DataValidationError, match=r"no 'test' split"):
        read_split(tmp_path, LABELS)


def test_package_source_resolves_to_the_shipped_sample(sample_dir: Path) -> None:
    assert Path(sources.resolve("package:emotions_pl/sample")) == sample_dir
    assert sources.resolve("dair-ai/emotion") == "dair-ai/emotion"


def corrupt(sample_dir: Path, tmp_path: Path, split: str, index: int, row: dict | None) -> Path:
    folder = copy_sample(sample_dir, tmp_path / "bad")
    rows = sample_rows(sample_dir, split)
    if row is None:
        rows.pop(index)
    else:
        rows[index] = row
    write_split(folder, split, rows)
    return folder


@pytest.mark.parametrize(
    ("split", "row", "message"),
    [
        (
            "train",
            {"text": "   ", "label": 1},
            r"train\.jsonl: 1 bad row\(s\): row 4: empty or non-text 'text'",
        ),
        (
            "validation",
            {"text": "i feel odd", "label": 9},
            r"validation\.jsonl: 1 bad row\(s\): row 4: label 9 is outside 0\.\.5",
        ),
        (
            "test",
            {"text": "i feel odd", "label": "bored"},
            r"test\.jsonl: 1 bad row\(s\): row 4: label 'bored' is not one of",
        ),
    ],
)
def test_bad_rows_name_file_row_and_problem(sample_dir, tmp_path, split, row, message) -> None:
    folder = corrupt(sample_dir, tmp_path, split, 3, row)
    with pytest.raises(DataValidationError, match=message):
        load_splits(str(folder), LABELS)


def test_missing_file_is_named(sample_dir: Path, tmp_path: Path) -> None:
    folder = copy_sample(sample_dir, tmp_path / "nofile")
    (folder / "validation.jsonl").unlink()
    with pytest.raises(
        DataValidationError, match=r"no 'validation' split; expected one of validation\.jsonl"
    ):
        load_splits(str(folder), LABELS)


def test_missing_column_is_named(sample_dir: Path, tmp_path: Path) -> None:
    folder = copy_sample(sample_dir, tmp_path / "nocol")
    rows = [{"tweet": r["text"], "label": r["label"]} for r in sample_rows(sample_dir, "train")]
    write_split(folder, "train", rows)
    with pytest.raises(DataValidationError, match=r"train\.jsonl: missing column\(s\) \['text'\]"):
        load_splits(str(folder), LABELS)


def test_split_missing_a_class_is_refused(sample_dir: Path, tmp_path: Path) -> None:
    folder = copy_sample(sample_dir, tmp_path / "noclass")
    rows = [r for r in sample_rows(sample_dir, "test") if r["label"] != 5]
    write_split(folder, "test", rows)
    with pytest.raises(DataValidationError, match=r"test\.jsonl: no examples of class\(es\) \['surprise'\]"):
        load_splits(str(folder), LABELS)


def test_invalid_json_line_is_named(sample_dir: Path, tmp_path: Path) -> None:
    folder = copy_sample(sample_dir, tmp_path / "badjson")
    path = folder / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[6] = '{"text": "oops", "label": '
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError, match=r"train\.jsonl line 7: invalid JSON"):
        load_splits(str(folder), LABELS)


def test_unset_source_without_env_says_what_to_do(monkeypatch) -> None:
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    with pytest.raises(DataValidationError, match="EMOTIONS_DATA_DIR"):
        EmotionDataModule(source=None).source  # noqa: B018


def test_hub_id_offline_fails_in_one_sentence(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(
        sources.HubUnreachableError, match=r"Cannot reach the Hugging Face hub.*--data\.source"
    ):
        load_splits("dair-ai/emotion", LABELS)


def make_dm(sample_dir: Path, minilm_dir: Path, tmp_path: Path, **kwargs) -> EmotionDataModule:
    return EmotionDataModule(
        source=str(sample_dir), tokenizer_name=str(minilm_dir), cache_dir=str(tmp_path / "cache"), **kwargs
    )


def test_tokenization_truncates_and_is_cached(sample_dir, minilm_dir, tmp_path, tokenizer) -> None:
    dm = make_dm(sample_dir, minilm_dir, tmp_path, max_length=8)
    dm.setup("fit")
    assert dm.cache_hits == {"train": False, "validation": False, "test": False}
    assert max(dm.lengths("train")) == 8
    first = dm.splits["train"][0]
    assert first["input_ids"] == tokenizer(first["text"], truncation=True, max_length=8)["input_ids"]
    again = make_dm(sample_dir, minilm_dir, tmp_path, max_length=8)
    again.setup("fit")
    assert again.cache_hits == {"train": True, "validation": True, "test": True}
    assert again.splits["train"]["input_ids"] == dm.splits["train"]["input_ids"]
    other = make_dm(sample_dir, minilm_dir, tmp_path, max_length=16)
    other.setup("fit")
    assert other.cache_hits["train"] is False  # a different max_length is a different cache entry


def padding_fraction(loader) -> float:
    pad = total = 0
    for batch in loader:
        mask = batch["attention_mask"]
        pad += int((mask == 0).sum())
        total += mask.numel()
    return pad / total


def test_length_grouping_cuts_padding_and_is_seeded(shared_data, minilm_dir, tmp_path) -> None:
    """On the real validation texts, grouped batches carry far less padding than random ones."""
    folder = tmp_path / "real"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        shutil.copy(shared_data / "validation.jsonl", folder / f"{split}.jsonl")  # 2k rows, all classes
    grouped = make_dm(folder, minilm_dir, tmp_path, batch_size=32, group_by_length=True)
    grouped.setup("fit")
    plain = make_dm(folder, minilm_dir, tmp_path, batch_size=32, group_by_length=False)
    plain.setup("fit")
    grouped_pad = padding_fraction(grouped.train_dataloader())
    random_pad = padding_fraction(plain.train_dataloader())
    assert grouped_pad < 0.5 * random_pad, (grouped_pad, random_pad)
    order = [b["labels"].tolist() for b in grouped.train_dataloader()]
    assert order == [b["labels"].tolist() for b in grouped.train_dataloader()]  # same seed, same epoch
    loader = grouped.train_dataloader()
    loader.sampler.set_epoch(1)
    assert [b["labels"].tolist() for b in loader] != order  # reshuffled next epoch
    assert sum(len(b) for b in order) == 2000  # nothing dropped


def test_collator_pads_per_batch_and_keeps_texts(sample_dir, minilm_dir, tmp_path) -> None:
    dm = make_dm(sample_dir, minilm_dir, tmp_path, batch_size=4)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
    assert batch["text"] == dm.splits["test"]["text"][:4]
    assert batch["labels"].dtype == torch.long


def test_a_folder_of_shards_is_one_split_and_a_bad_row_names_its_shard(sample_dir, tmp_path) -> None:
    """``train-*.jsonl`` shards read as one split in name order; an error names the shard and its line."""
    folder = copy_sample(sample_dir, tmp_path / "shards")
    rows = sample_rows(sample_dir, "train")
    (folder / "train.jsonl").unlink()
    write_split(folder, "train-00000", rows)
    write_split(folder, "train-00001", rows[::-1])
    tables = load_splits(str(folder), LABELS)
    assert tables["train"]["text"].tolist() == [r["text"] for r in rows + rows[::-1]]
    write_split(folder, "train-00001", [*rows[:5], {"text": "i feel odd", "label": 7}, *rows[5:]])
    with pytest.raises(DataValidationError, match=r"train-00001\.jsonl: 1 bad row\(s\): row 6: label 7 is"):
        load_splits(str(folder), LABELS)
    write_split(folder, "train-00002", rows, "parquet")
    with pytest.raises(DataValidationError, match=r"'train' split is ambiguous"):
        load_splits(str(folder), LABELS)


def test_blank_lines_and_mixed_label_types_in_jsonl(sample_dir, tmp_path) -> None:
    """A blank line is refused by number (Arrow alone would skip it and shift every later row); labels
    given by name on some lines and by index on others are read row by row, as before."""
    folder = copy_sample(sample_dir, tmp_path / "mixed")
    rows = sample_rows(sample_dir, "train")
    mixed = [
        {"text": r["text"], "label": LABELS[r["label"]] if i % 2 else r["label"]} for i, r in enumerate(rows)
    ]
    write_split(folder, "train", mixed)
    assert load_splits(str(folder), LABELS)["train"]["label"].tolist() == [r["label"] for r in rows]
    write_split(folder, "train", [*mixed[:2], {"text": "i feel odd", "label": "3"}, *mixed[3:]])
    with pytest.raises(
        DataValidationError, match=r"train\.jsonl: 1 bad row\(s\): row 3: label '3' is not one"
    ):
        load_splits(str(folder), LABELS)  # a digit string is not an index in JSON, as before
    write_split(folder, "train", mixed)
    path = folder / "train.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:4], "  ", *lines[4:]]) + "\n")
    with pytest.raises(DataValidationError, match=r"train\.jsonl line 5: blank line"):
        load_splits(str(folder), LABELS)


def test_every_bad_row_of_a_large_split_is_counted(sample_dir, tmp_path) -> None:
    """Bad rows in several map batches: the count covers all of them, the first ten are named."""
    folder = copy_sample(sample_dir, tmp_path / "many")
    rows = sample_rows(sample_dir, "train") * 600  # > 2 map batches
    for i in (3, 12_345, 25_000):
        rows[i] = {"text": "", "label": 0}
    write_split(folder, "train", rows)
    with pytest.raises(
        DataValidationError, match=r"train\.jsonl: 3 bad row\(s\): row 4: .*row 12346: .*row 25001: "
    ):
        load_splits(str(folder), LABELS)


def test_token_ids_equal_the_tokenizer_call_on_real_rows(
    shared_data, minilm_dir, tmp_path, tokenizer
) -> None:
    """The map's ids (the Rust tokenizer, Arrow lists) equal ``tokenizer(texts, truncation=True)`` (what
    the module fed the model before it read through ``datasets``), mask included, on the real train."""
    folder = tmp_path / "real"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        shutil.copy(shared_data / f"{split}.jsonl", folder / f"{split}.jsonl")
    dm = make_dm(folder, minilm_dir, tmp_path, max_length=32)
    dm.setup("fit")
    train = dm.splits["train"].to_dict()
    expected = tokenizer(train["text"], truncation=True, max_length=32)
    assert train["input_ids"] == expected["input_ids"]
    assert train["attention_mask"] == expected["attention_mask"]
    assert train["labels"] == [json.loads(line)["label"] for line in (folder / "train.jsonl").open()]
    lengths = dm.lengths("train")
    assert lengths.tolist() == [len(ids) for ids in expected["input_ids"]] and lengths.max() == 32
