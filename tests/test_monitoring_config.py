"""Monitoring configs (docker/monitoring): valid for Prometheus and Grafana, and every metric they query is
one the server really exports -- checked against serve/prometheus.py's metric objects, a live server's
/metrics, and a real Prometheus scraping that server with the shipped config and rules."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from emotions_pl.serve.http import KNOWN_PATHS
from emotions_pl.serve.prometheus import metrics
from helpers import REPO, Server, free_port, run_main, wait_for

MONITORING = REPO / "docker" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "emotions.json"
SAMPLE_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
METRIC = re.compile(r"\b(emotions_[a-z0-9_]+)\b")
RECORDED = re.compile(r"\b(emotions:[a-z0-9_:]+)")
SELECTOR = re.compile(r"\b(emotions_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')


def rule_groups() -> list[dict]:
    return yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]


def expressions() -> dict[str, str]:
    """Every PromQL expression in the rules and the dashboard, by where it is."""
    exprs = {
        f"alerts.yml {rule.get('record') or rule['alert']}": rule["expr"]
        for group in rule_groups()
        for rule in group["rules"]
    }
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            exprs[f"dashboard {panel['title']!r} {target['refId']}"] = target["expr"]
    return exprs


def exported_sample_names() -> set[str]:
    """Sample names the server's metric objects produce (prometheus.metrics() is what /metrics serves)."""
    names = set()
    for metric in vars(metrics()).values():
        for family in metric.collect():
            names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    return names


def test_prometheus_scrapes_the_compose_serve_service() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "emotions" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["serve:8000"]
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    command = compose["services"]["serve"]["command"]
    assert command[command.index("--port") + 1] == "8000"
    assert all((MONITORING / f).is_file() for f in config["rule_files"])
    monitoring_compose = yaml.safe_load((MONITORING / "compose.yaml").read_text())
    assert monitoring_compose["include"] == ["../compose.yaml"]
    assert {"prometheus", "grafana"} <= monitoring_compose["services"].keys()
    for service in monitoring_compose["services"].values():
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            assert not source.startswith(".") or (MONITORING / source).exists(), source


def test_every_queried_metric_is_exported_by_the_server() -> None:
    exported = exported_sample_names()
    assert "emotions_http_request_duration_seconds_bucket" in exported  # the p95 alert's input
    recorded = {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}
    job = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"][0]["job_name"]
    for where, expr in expressions().items():
        assert set(METRIC.findall(expr)) <= exported, (where, set(METRIC.findall(expr)) - exported)
        assert set(RECORDED.findall(expr)) <= recorded, where
        for _, matchers in SELECTOR.findall(expr):
            for name, value in MATCHER.findall(matchers):
                if name == "path":
                    assert value in KNOWN_PATHS, (where, value)
        if "up{" in expr:
            assert f'job="{job}"' in expr, where
    alerts = {rule["alert"] for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    assert alerts == {
        "EmotionsTargetDown",
        "EmotionsHighErrorRate",
        "EmotionsHighP95Latency",
        "EmotionsPredictionShift",
    }


def test_grafana_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= grid.keys() and grid["x"] + grid["w"] <= 24
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    datasources = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    provisioning = yaml.safe_load(datasources.read_text())
    assert provisioning["datasources"][0]["uid"] == variables["datasource"]["current"]["value"]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
def test_promtool_validates_config_and_alert_unit_tests() -> None:
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]):
        proc = subprocess.run(
            ["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout


def start_prometheus(target: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    """The shipped config and rules, with the target pointed at the test server and 1 s intervals."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["scrape_configs"][0]["scrape_timeout"] = "1s"
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [target]
    config["rule_files"] = [str(MONITORING / f) for f in config["rule_files"]]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        stdout=(tmp / "prometheus.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    return proc, url


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def query(url: str, expr: str) -> list[dict]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def values(url: str, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in query(url, expr)]


@pytest.mark.integration
def test_live_server_metrics_prometheus_and_drift_on_its_logs(
    exported_dir: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """The monitoring loop end to end: a served model, its /metrics, Prometheus with the shipped rules,
    and the drift report on the server's own prediction log."""

    texts = [json.loads(line)["text"] for line in (sample_dir / "test.jsonl").read_text().splitlines()]
    server = Server(exported_dir, tmp_path / "server.log", "--log-dir", str(tmp_path / "predlog"))
    prometheus = None
    try:
        if shutil.which("prometheus"):
            prometheus, prom_url = start_prometheus(f"127.0.0.1:{server.port}", tmp_path)
            wait_for(lambda: ready(prom_url))
        batches = [texts[i : i + 4] for i in range(0, len(texts), 4)]
        for n, batch in enumerate(batches):
            response = httpx.post(f"{server.url}/predict", json={"texts": batch}, timeout=30)
            assert response.status_code == 200
            if n == 0 and prometheus is not None:
                # A counter series must be scraped once before it moves, or rate() has no start point:
                # the label counters start at 0 with the server, the status series with its first request.
                wait_for(lambda: values(prom_url, 'emotions_http_requests_total{status="200"}') != [])
        assert httpx.post(f"{server.url}/predict", json={"text": ""}, timeout=30).status_code == 422
        scraped = httpx.get(f"{server.url}/metrics", timeout=30).text
        families = list(text_string_to_metric_families(scraped))
        live = {sample.name: set(sample.labels) for family in families for sample in family.samples}
        for where, expr in expressions().items():
            for name in METRIC.findall(expr):
                assert name in live, (where, name)
            for name, matchers in SELECTOR.findall(expr):
                assert {label for label, _ in MATCHER.findall(matchers)} <= live[name], (where, matchers)

        if prometheus is not None:
            wait_for(lambda: values(prom_url, "emotions:predict_requests:rate5m") > [0.0])
            wait_for(lambda: sum(values(prom_url, "emotions:predicted_label:share_1h")) == pytest.approx(1.0))
            assert values(prom_url, 'up{job="emotions"}') == [1.0]
            groups = httpx.get(f"{prom_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            shipped = [rule.get("record") or rule["alert"] for g in rule_groups() for rule in g["rules"]]
            assert sorted(r["name"] for r in rules) == sorted(shipped)  # every shipped rule loaded
            assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    finally:
        if prometheus is not None:
            prometheus.send_signal(signal.SIGTERM)
            prometheus.wait(timeout=30)
        server.stop(signal.SIGINT)

    # The log was flushed on shutdown: one record per predicted text, and drift reads it.
    logs = list((tmp_path / "predlog").glob("predictions-*.jsonl*"))
    rc = run_main(
        "drift",
        "--reference",
        str(sample_dir / "train.jsonl"),
        "--current",
        str(tmp_path / "predlog"),
        "--model",
        str(exported_dir),
        "--output",
        str(tmp_path / "drift"),
    )
    summary = json.loads((tmp_path / "drift" / "drift.json").read_text())
    assert logs and summary["current"]["kind"] == "log" and summary["current"]["rows"] == len(texts)
    checks = {c["name"]: c for c in summary["checks"]}
    assert checks["label"]["skipped"] is None and checks["label"]["details"]["labels"] == "predicted"
    assert checks["score"]["skipped"] is None
    assert rc == (1 if summary["drift"] else 0)
