"""Running N replicas: the Kubernetes manifests (offline, against the Kubernetes schemas with
kubernetes-validate) and the Cloud Run settings agree with the image, the server and each other; the
server starts with the manifests' flags and answers the probe."""

from __future__ import annotations

import os
import shlex
import subprocess

import httpx
import kubernetes_validate
import pytest

from helpers import BATCHING, REPO, Server, k8s_documents, manifest_batching

DEPLOY = REPO / "docker" / "gcp" / "deploy_cloud_run.sh"
DOCKERFILE = REPO / "docker" / "Dockerfile.serve"


def container() -> dict:
    return k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def cloud_run_argv() -> list[str]:
    proc = subprocess.run(
        ["bash", str(DEPLOY)],
        env={**os.environ, "DRY_RUN": "1", "PROJECT_ID": "p", "MODEL_BUCKET": "b"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
def test_manifests_are_valid_kubernetes(kind: str) -> None:
    """Strict: unknown fields are errors too (a typo in a probe would be silently ignored by kubectl)."""
    doc = k8s_documents()[kind]
    assert kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_a_broken_manifest_is_caught() -> None:
    doc = k8s_documents()["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_pieces_fit_together() -> None:
    docs = k8s_documents()
    deployment, service, hpa, pdb = (
        docs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]

    c = container()
    port = next(p for p in c["ports"] if p["name"] == "http")
    assert f"EXPOSE {port['containerPort']}" in DOCKERFILE.read_text()
    assert flag(c["args"], "--port") == str(port["containerPort"]) and flag(c["args"], "--host") == "0.0.0.0"
    assert service["spec"]["ports"][0]["targetPort"] in ("http", port["containerPort"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"]  # threads = the CPU limit
    mount = next(m for m in c["volumeMounts"] if m["name"] == "model")
    assert mount["mountPath"] == flag(c["args"], "--model") and mount["readOnly"] is True
    assert c["env"][0]["name"] == "LIT_SERVER_API_KEY" and "value" not in c["env"][0]  # from a Secret only


def test_manifest_and_cloud_run_run_the_server_with_the_same_batching() -> None:
    from emotions_pl.serve import options

    args = container()["args"]
    assert args[0] == "serve"
    parsed = options.build_parser().parse_args(args[1:])  # the image's ENTRYPOINT is python -m emotions_pl
    assert parsed.batch_timeout == 0 and parsed.variant == options.AUTO and parsed.threads is None
    argv = cloud_run_argv()
    cloud = next(a for a in argv if a.startswith("--args=")).removeprefix("--args=").split(",")
    assert {f: flag(cloud, f) for f in BATCHING} == {f: flag(args, f) for f in BATCHING}
    concurrency = int(next(a for a in argv if a.startswith("--concurrency=")).split("=")[1])
    batch, workers = int(flag(args, "--max-batch-size")), int(flag(args, "--workers-per-device"))
    assert concurrency == 2 * batch * workers  # one batch running, one queued
    cpus = next(a for a in argv if a.startswith("--cpu=")).split("=")[1]
    assert cpus == container()["resources"]["limits"]["cpu"]


@pytest.mark.integration
def test_the_server_starts_with_the_manifest_flags(int8_server: Server) -> None:
    """The container's batching flags, on loopback and a free port, with the smoke export as the model:
    the session's int8 server (conftest) starts with them."""
    keep = manifest_batching()
    assert keep and " ".join(keep) in " ".join(int8_server.args)
    probe = container()["readinessProbe"]["httpGet"]["path"]
    assert httpx.get(f"{int8_server.url}{probe}", timeout=10).text == "ok"
    batching = httpx.get(f"{int8_server.url}/info", timeout=10).json()["model"]["batching"]
    assert batching["batch_timeout"] == 0 and batching["max_batch_size"] == 16
