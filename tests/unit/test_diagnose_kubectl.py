"""The cluster's way to reach a node: `kubectl exec` into the agent container of the node's Raven
pod, checked against a stand-in kubectl that records what it was asked and answers as kubectl
would."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from raven.diagnose.facts import COLLECT_SCRIPT
from raven.diagnose.probes import Capture, Echo
from raven.diagnose.transport import KubectlTransport, TransportError

PODS = {
    "items": [
        {"metadata": {"name": "raven-abc"}, "spec": {"nodeName": "edge-a-1"},
         "status": {"phase": "Running"}},
        {"metadata": {"name": "raven-old"}, "spec": {"nodeName": "edge-a-2"},
         "status": {"phase": "Failed"}},
    ]
}  # fmt: skip


@pytest.fixture
def kubectl(tmp_path: Path) -> tuple[Path, Path]:
    """A kubectl that appends its argv (JSON) to calls.jsonl and answers by subcommand."""
    calls = tmp_path / "calls.jsonl"
    (tmp_path / "pods.json").write_text(json.dumps(PODS))
    script = tmp_path / "kubectl"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "if 'get' in args:\n"
        f"    print(open({str(tmp_path / 'pods.json')!r}).read())\n"
        "elif 'raven.diagnose.probes' in args:\n"
        "    if '\"Capture\"' in args[-1]:\n"
        "        print('ready', flush=True)\n"
        "        print(json.dumps({'seen': [], 'error': ''}))\n"
        "    else:\n"
        "        reply = {'size': 84, 'outcome': 'reply', 'detail': '', 'rtt_ms': 1.0}\n"
        "        print(json.dumps([reply]))\n"
        "else:\n"
        "    print('@@ now\\n1\\n@@ end')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, calls


def argv_of(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_facts_are_collected_in_the_agent_container_of_the_nodes_raven_pod(kubectl):
    exe, calls = kubectl
    t = KubectlTransport(kubectl=str(exe), kubeconfig="/k", wg_interface="raven0")
    assert "@@ end" in t.collect("edge-a-1", table=9027)
    get, run = argv_of(calls)
    assert get == ["--kubeconfig", "/k", "-n", "raven-system", "get", "pods", "-l",
                   "app.kubernetes.io/name=raven", "-o", "json"]  # fmt: skip
    assert run == ["--kubeconfig", "/k", "-n", "raven-system", "exec", "raven-abc", "-c", "agent",
                   "--", "env", "WG=raven0", "TABLE=9027", "sh", "-c", COLLECT_SCRIPT]  # fmt: skip


def test_probes_run_as_raven_diagnose_probes_and_a_capture_says_when_it_listens(kubectl):
    exe, calls = kubectl
    t = KubectlTransport(kubectl=str(exe))
    echo = t.probe("edge-a-1", Echo("10.244.11.1", "10.244.21.2", (84,), 7), ready=lambda: None)
    assert echo[0]["outcome"] == "reply"
    ready = []
    seen = t.probe("edge-a-1", Capture(0.5, icmp_id=7), ready=lambda: ready.append(True))
    assert seen == {"seen": [], "error": ""} and ready == [True]
    assert argv_of(calls)[1][-4:-1] == ["python", "-m", "raven.diagnose.probes"]


def test_a_node_without_a_running_raven_pod_is_named(kubectl):
    exe, _ = kubectl
    with pytest.raises(TransportError, match="no running Raven pod on node edge-a-2"):
        KubectlTransport(kubectl=str(exe)).collect("edge-a-2", table=9027)
