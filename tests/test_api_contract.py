"""The OpenAPI document is the contract: Schemathesis (every check) finds nothing against a real server,
with and without an API key, and a client generated from the document calls /predict.

Bounded: ``MAX_EXAMPLES`` examples per operation (about 200 requests, 10-40 s here) and ``MAX_TIME``
seconds per run at most, a fixed seed (set ``SCHEMATHESIS_SEED`` to explore others). Schemathesis's own
``--max-time`` is not used: it turns the example count into a floor and fuzzes for the whole budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from helpers import REPO, Server

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 100
MAX_TIME = 300
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261202")
BIN = Path(sys.executable).parent
CODEGEN = REPO / ".venv" / "codegen" / "bin"  # .ci/run installs requirements/codegen.txt there


@pytest.fixture(params=["no key", "key"], scope="module")
def server(request: pytest.FixtureRequest) -> Server:
    """The session's int8 servers (conftest), without and with an API key."""
    return request.getfixturevalue("int8_server" if request.param == "no key" else "keyed_server")


def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    command = [
        str(BIN / "schemathesis"),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    if server.key:
        command += ["--header", f"X-API-Key: {server.key}"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=MAX_TIME)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert "No issues found" in out, out[-4000:]
    assert "Tested: 7" in out, out[-4000:]  # every documented operation, /ui, /metrics, /explain included
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # alive after the fuzzing


def test_a_generated_typed_client_calls_predict(server: Server, tmp_path: Path) -> None:
    generator = CODEGEN / "openapi-python-client"
    if not generator.is_file():
        pytest.skip(
            f"no {generator}: openapi-python-client pins typer<0.28, which the project's venv cannot hold; "
            "install requirements/codegen.txt into .venv/codegen (.ci/run does)"
        )
    spec = tmp_path / "openapi.json"
    spec.write_text(httpx.get(f"{server.url}/openapi.json", timeout=30).text)
    env = {**os.environ, "PATH": f"{CODEGEN}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "gen" / "emotions_client"
    proc = subprocess.run(
        [str(generator), "generate", "--path", str(spec), "--output-path", str(out), "--meta", "none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probe = f"""
import json, sys
sys.path.insert(0, {str(out.parent)!r})
from emotions_client import AuthenticatedClient, Client
from emotions_client.api.default import predict
from emotions_client.models import ManyTexts, OneText, Prediction, ValidationFailure
key = {server.key!r}
client = (AuthenticatedClient(base_url={server.url!r}, token=key, prefix="", auth_header_name="X-API-Key")
          if key else Client(base_url={server.url!r}))
one = predict.sync(client=client, body=OneText(text="i feel wonderful today"))
many = predict.sync(client=client, body=ManyTexts(texts=["so happy", "so scared"]))
bad = predict.sync(client=client, body=OneText(text="   "))
assert isinstance(one, Prediction) and all(isinstance(p, Prediction) for p in many), (one, many)
assert isinstance(bad, ValidationFailure), bad
print(json.dumps({{"label": one.label, "scores": one.scores.additional_properties, "n": len(many),
                  "error": bad.detail[0].msg}}))
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["n"] == 2 and "empty or only whitespace" in got["error"]
    assert abs(sum(got["scores"].values()) - 1) < 1e-5 and got["label"] in got["scores"]
