"""deploy/monitoring/: the alerts and the dashboard read only metrics the contract documents.

deploy/monitoring/README.md is the list the agent's exporter follows; an expression naming a
metric that is not in it would show nothing, silently, so it fails here instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\braven_[a-z_]+\b")
# What prometheus-client appends to a counter or a histogram's series.
SUFFIXES = ("_bucket", "_sum", "_count")


def documented() -> set[str]:
    """Metric names in the README's tables (first column)."""
    names = set()
    for line in (MONITORING / "README.md").read_text().splitlines():
        cell = re.match(r"\| `(raven_[a-z_]+)` \|", line)
        if cell:
            names.add(cell.group(1))
    return names


def base_name(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return {r["alert"]: r for group in doc["groups"] for r in group["rules"]}


def dashboard_exprs() -> list[str]:
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_the_three_alerts_exist_with_severity_and_summary() -> None:
    rules = alerts()
    assert set(rules) == {"RavenGatewayWithoutHolder", "RavenPeerDown", "RavenFailoverStorm"}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert METRIC.search(rule["expr"]), name


def test_alerts_and_dashboard_use_only_documented_metrics() -> None:
    known = documented()
    assert "raven_pool_holder" in known and "raven_cacheproxy_cloud_healthy" in known
    exprs = [r["expr"] for r in alerts().values()] + dashboard_exprs()
    used = {base_name(m) for e in exprs for m in METRIC.findall(e)}
    assert used - known == set(), f"not in deploy/monitoring/README.md: {sorted(used - known)}"


def test_the_cache_proxy_metrics_documented_are_the_ones_it_exports(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from raven.cacheproxy.server import CacheProxy, ProxyConfig
    from raven.lab.apiserver.pki import make_pki

    pki = make_pki(tmp_path / "pki", ["127.0.0.1"])
    proxy = CacheProxy(ProxyConfig("https://127.0.0.1:1", pki.ca_cert, tmp_path / "cache"))
    proxy.m_requests.labels("forward")  # a labelled counter shows once it has a child
    for gauge in proxy.m_shared.values():
        gauge.labels("services")
    proxy.m_shared_reads.labels("services", "list")
    proxy.m_source.labels("services", "")
    proxy.m_feed_refused.labels("identity")
    samples = [
        line.split("{")[0].split()[0]
        for line in generate_latest(proxy.registry).decode().splitlines()
        if line and not line.startswith("#")
    ]
    exported = {base_name(m) for m in samples if not m.endswith("_created")}
    documented_proxy = {m for m in documented() if m.startswith("raven_cacheproxy_")}
    assert exported == documented_proxy


def test_every_dashboard_panel_has_a_query_and_a_unique_id() -> None:
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in dash["panels"])
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"


def test_the_agent_metrics_documented_are_the_ones_it_exports() -> None:
    from prometheus_client import generate_latest

    from agent.metrics import AgentMetrics

    metrics = AgentMetrics()
    # Labelled metrics show once they have a child; peers once there is a peer.
    metrics.kernel_writes({"route": 1})
    metrics.holders({"edge-a": "n1"}, me="n1", my_pool="edge-a")
    metrics.elections.labels("edge-a").inc()
    metrics.failovers.labels("edge-a")
    entry = {"pool": "cloud", "node": "c1", "state": "Up", "rttMs": 1.0, "lossPercent": 0}
    metrics.peers.update("edge-a", [entry | {"handshakeAt": 1.0, "rxBytes": 1}], now=2.0)
    samples = [
        line.split("{")[0].split()[0]
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line and not line.startswith("#")
    ]
    exported = {base_name(m) for m in samples if not m.endswith("_created")}
    documented_agent = {
        m for m in documented() if not m.startswith(("raven_cacheproxy_", "raven_heartbeat_"))
    }
    assert exported == documented_agent


def test_the_heartbeat_metrics_documented_are_the_ones_it_exports() -> None:
    from prometheus_client import generate_latest

    from raven.heartbeat.metrics import HeartbeatMetrics

    metrics = HeartbeatMetrics()
    samples = [
        line.split("{")[0].split()[0]
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line and not line.startswith("#")
    ]
    exported = {base_name(m) for m in samples if not m.endswith("_created")}
    documented_heartbeat = {m for m in documented() if m.startswith("raven_heartbeat_")}
    assert exported == documented_heartbeat
