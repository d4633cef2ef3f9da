"""Raven's image: small enough, every tool the agent runs, every entry point starts."""

from __future__ import annotations

import pytest

from raven.lab.dockerd import Engine

from .conftest import IMAGE_SIZE_GOAL_MB

pytestmark = pytest.mark.root


def run(docker: Engine, image: str, *argv: str, user: str | None = None) -> tuple[int, str]:
    args = ["run", "--rm", "--network", "none"]
    if user is not None:
        args += ["--user", user]
    proc = docker.run(*args, image, *argv, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_image_size_is_within_the_goal(docker: Engine, image: str) -> None:
    size = int(docker.run("image", "inspect", "-f", "{{.Size}}", image).stdout)
    print(f"\nimage {image}: {size / 1e6:.0f} MB (goal <= {IMAGE_SIZE_GOAL_MB} MB)")
    assert size <= IMAGE_SIZE_GOAL_MB * 1_000_000


def test_image_has_the_tools_the_agent_runs(docker: Engine, image: str) -> None:
    # ip/wg/wireguard-go: the WireGuard device; iptables: the MSS clamp; ping: tunnel probes;
    # openssl: the pod's prepare step; tini: PID 1.
    tools = ["ip", "wg", "wireguard-go", "iptables", "ping", "openssl", "tini", "sleep"]
    script = f"for t in {' '.join(tools)}; do command -v $t || echo missing $t; done"
    code, out = run(docker, image, "sh", "-c", script)
    assert code == 0 and "missing" not in out, out
    assert len(out.split()) == len(tools)
    code, out = run(docker, image, "iptables", "--version")
    assert code == 0 and "nf_tables" in out, out


def test_image_runs_as_an_unprivileged_user_by_default(docker: Engine, image: str) -> None:
    code, out = run(docker, image, "id", "-u")
    assert (code, out.strip()) == (0, "65532")


def test_heartbeat_entry_point_starts_and_names_a_bad_setting(docker: Engine, image: str) -> None:
    code, out = run(docker, image, "raven-heartbeat", "--help")
    assert code == 0 and "--relay-port" in out and "--path-file" in out, out
    code, out = run(
        docker, image, "raven-heartbeat", "--node", "n1", "--upstream", "http://198.18.0.1:6443",
        "--path-file", "/tmp/p.json",
    )  # fmt: skip
    assert code == 2 and "--upstream" in out, out


def test_agent_entry_point_starts_and_names_a_bad_setting(docker: Engine, image: str) -> None:
    code, out = run(docker, image, "raven-agent", "--help")
    assert code == 0 and "--node-name" in out and "--cleanup" in out, out
    code, out = run(docker, image, "raven-agent", "--node-name", "n1", "--rule-priority", "0")
    assert code == 2, out
    assert "bad setting rule_priority" in out


def test_cache_proxy_entry_point_starts_and_names_a_bad_flag(docker: Engine, image: str) -> None:
    code, out = run(docker, image, "raven-cache-proxy", "--help")
    assert code == 0 and "--upstream" in out, out
    code, out = run(
        docker, image, "raven-cache-proxy", "--upstream", "http://example.test",
        "--ca-cert", "/etc/hostname", "--cache-dir", "/tmp/cache",
    )  # fmt: skip
    assert code == 2 and "must be https://" in out, out


def test_the_lab_stays_out_of_the_image(docker: Engine, image: str) -> None:
    find = "import importlib.util as u; print(u.find_spec('raven.lab'), u.find_spec('agent'))"
    code, out = run(docker, image, "python3", "-c", find)
    assert code == 0 and out.startswith("None ModuleSpec"), out
    code, out = run(docker, image, "sh", "-c", "command -v raven")
    assert code != 0, f"the operator's CLI needs the lab, yet is in the image: {out}"
