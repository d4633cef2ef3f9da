"""A kubelet stand-in: runs one pod of a rendered DaemonSet under Docker, the way a kubelet would.

There is no kubelet here, so this does its part for the one pod spec Raven ships, from the spec
itself (nothing is repeated by hand): a sandbox container holds the pod's network namespace (the
node's own, for a hostNetwork pod: the host's, or a namespace the caller names and wires like a
lab node); the init containers run to completion, in order; then every container starts with its
command and arguments, ``$(VAR)`` expanded against its environment (``fieldRef``
``spec.nodeName`` and ``status.hostIP``, ``envFrom`` ConfigMaps, the ``KUBERNETES_SERVICE_*``
variables the kubelet adds); its security context (user, capabilities, read-only root, no
privilege escalation) and volumes: hostPath under a per-node folder standing for the node's root
(devices and the xtables lock from the real host), ConfigMaps from the rendered objects, the
projected token, emptyDirs as tmpfs, subPaths. Probes are HTTP GETs from the node's network, as
the kubelet makes them; stopping runs preStop hooks, then SIGTERM with the pod's grace period.

Every container carries the label ``raven-test-pod=<pod>``, so :meth:`Pod.remove` (and a test
session's teardown) removes exactly the containers it made.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raven.lab.dockerd import Engine

LABEL = "raven-test-pod"
# The host paths that stay the real host's (a device; the lock every iptables user shares);
# every other hostPath lives under the node's own folder.
REAL_HOST_PATHS = {"/dev/net/tun", "/run/xtables.lock"}
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Obj = dict[str, Any]


class PodError(RuntimeError):
    """A container of the pod failed to start or an init container failed."""


KUBELET_CLIENT_PEM = "var/lib/kubelet/pki/kubelet-client-current.pem"
KUBELET_SERVER_PEM = "var/lib/kubelet/pki/kubelet-server-current.pem"


def install_kubelet_certificate(
    root: Path, cert: Path, key: Path, *, where: str = KUBELET_CLIENT_PEM
) -> Path:
    """Put a node's client certificate where kubeadm's kubelet keeps it, under the node's root:
    certificate and key in one file, root's, mode 0600 (``where``: KUBELET_SERVER_PEM for its
    serving certificate, as the kubelet keeps it with serverTLSBootstrap)."""
    pem = root / where
    pem.parent.mkdir(parents=True, exist_ok=True)
    pem.touch(mode=0o600)
    pem.chmod(0o600)
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    return pem


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, unknown ones left as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


@dataclass
class Cluster:
    """What the pod's containers see of the cluster: the rendered objects (ConfigMaps), the API
    server's address for the ``kubernetes`` Service variables, the cluster CA (the
    ``kube-root-ca.crt`` ConfigMap) and the ServiceAccount's token."""

    objects: list[Obj]
    api_host: str
    api_port: int
    ca_cert: Path
    token: str

    def config_map(self, namespace: str, name: str) -> dict[str, str]:
        if name == "kube-root-ca.crt":
            return {"ca.crt": self.ca_cert.read_text()}
        for obj in self.objects:
            meta = obj["metadata"]
            if obj["kind"] == "ConfigMap" and (meta.get("namespace"), meta["name"]) == (
                namespace,
                name,
            ):
                data: dict[str, str] = obj.get("data", {})
                return data
        raise PodError(f"ConfigMap {namespace}/{name} is not among the rendered objects")


@dataclass
class Pod:
    """One pod of ``spec`` on node ``node``; ``root`` stands for the node's ``/``."""

    engine: Engine
    cluster: Cluster
    namespace: str
    spec: Obj
    node: str
    root: Path
    name: str = ""
    # What the kubelet probes when a probe names no host: the pod's IP, for a hostNetwork pod
    # its node's address (loopback stands for this host's).
    pod_ip: str = "127.0.0.1"
    sandbox: str = ""
    containers: dict[str, str] = field(default_factory=dict)  # name -> docker container name

    def __post_init__(self) -> None:
        self.name = self.name or f"raven-{self.node}"

    # -- sandbox -----------------------------------------------------------------------------

    def start_sandbox(self, *, network: str = "host") -> int:
        """The pod's sandbox, holding its network namespace: ``host`` (the host's, a hostNetwork
        pod on this machine) or ``none`` (a fresh one the caller wires; see :attr:`netns_pid`).
        Returns its PID."""
        if not self.spec.get("hostNetwork"):
            raise PodError("only hostNetwork pods are supported")
        self.sandbox = f"{self.name}-sandbox"
        image = self.spec["containers"][0]["image"]
        self.engine.run(
            "run", "-d", "--name", self.sandbox, "--label", f"{LABEL}={self.name}",
            "--network", network, "--user", "65532:65532", "--read-only",
            "--cap-drop", "ALL", "--entrypoint", "sleep", image, "infinity",
        )  # fmt: skip
        return self.netns_pid

    @property
    def netns_pid(self) -> int:
        """A PID inside the pod's network namespace (the sandbox's)."""
        out = self.engine.run("inspect", "-f", "{{.State.Pid}}", self.sandbox).stdout
        return int(out.strip())

    # -- containers --------------------------------------------------------------------------

    def env_of(self, c: Obj) -> dict[str, str]:
        env = {
            "KUBERNETES_SERVICE_HOST": self.cluster.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.cluster.api_port),
        }
        for source in c.get("envFrom", []):
            env.update(self.cluster.config_map(self.namespace, source["configMapRef"]["name"]))
        for item in c.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(item["value"], env)
            elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                env[item["name"]] = self.node
            elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.hostIP":
                env[item["name"]] = self.pod_ip  # a hostNetwork pod's IP is its node's
            else:
                raise PodError(f"{c['name']}: env {item['name']} is of a kind not supported")
        return env

    def _volume_source(self, volume: Obj, sub_path: str | None) -> list[str]:
        """``docker run`` arguments for one volume mounted at the placeholder ``{dest}``."""
        name = volume["name"]
        if "hostPath" in volume:
            path = volume["hostPath"]["path"]
            kind = volume["hostPath"].get("type", "")
            if path in REAL_HOST_PATHS:
                source = Path(path)
                if kind == "FileOrCreate":
                    source.touch(exist_ok=True)
            else:
                source = self.root / path.lstrip("/")
                if kind == "DirectoryOrCreate":
                    source.mkdir(parents=True, exist_ok=True)
            if sub_path:
                source = source / sub_path
                source.mkdir(parents=True, exist_ok=True)
            if not source.exists():
                raise PodError(f"hostPath {path} ({kind or 'no type'}) does not exist")
            return ["-v", f"{source}:{{dest}}"]
        if "configMap" in volume:
            data = self.cluster.config_map(self.namespace, volume["configMap"]["name"])
            folder = self.root / "pods" / self.name / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (folder / key).write_text(value)
            return ["-v", f"{folder}:{{dest}}:ro"]
        if "projected" in volume:
            folder = self.root / "pods" / self.name / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            for source_ in volume["projected"]["sources"]:
                token = source_["serviceAccountToken"]
                (folder / token["path"]).write_text(self.cluster.token)
            return ["-v", f"{folder}:{{dest}}:ro"]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "16Mi").replace("Mi", "m")
            return ["--mount", f"type=tmpfs,destination={{dest}},tmpfs-size={size}"]
        raise PodError(f"volume {name} is of a kind not supported")

    def run_args(self, c: Obj, container: str) -> list[str]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        env = self.env_of(c)
        args = [
            "--name", container, "--label", f"{LABEL}={self.name}",
            "--network", f"container:{self.sandbox}",
        ]  # fmt: skip
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        sc = c.get("securityContext", {})
        if "runAsUser" in sc:
            args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for mount in c.get("volumeMounts", []):
            part = self._volume_source(volumes[mount["name"]], mount.get("subPath"))
            part[-1] = part[-1].replace("{dest}", mount["mountPath"])
            if mount.get("readOnly") and part[0] == "-v" and not part[-1].endswith(":ro"):
                part[-1] += ":ro"
            args += part
        command = [expand(a, env) for a in c.get("command", [])]
        if command:
            args += ["--entrypoint", command[0]]
        args.append(c["image"])
        args += command[1:] + [expand(a, env) for a in c.get("args", [])]
        return args

    def run_init(self, *, timeout: float = 60.0) -> None:
        """Every init container, in order, each to completion; PodError with its log when one
        fails."""
        for c in self.spec.get("initContainers", []):
            container = f"{self.name}-{c['name']}"
            self.engine.run("rm", "-f", container, check=False)
            proc = self.engine.run(
                "run", *self.run_args(c, container), check=False, timeout=timeout
            )
            self.engine.run("rm", "-f", container, check=False)
            if proc.returncode != 0:
                raise PodError(
                    f"init container {c['name']} exited {proc.returncode}: {proc.stderr[-2000:]}"
                )

    def start_container(self, name: str) -> str:
        """Start (or start anew, as a kubelet restarts one) the container ``name``."""
        c = self.container_spec(name)
        container = f"{self.name}-{name}"
        self.engine.run("rm", "-f", container, check=False)
        self.engine.run("run", "-d", *self.run_args(c, container))
        self.containers[name] = container
        return container

    def start(self, *, network: str = "host") -> None:
        """Sandbox (unless started already), init containers, then every container."""
        if not self.sandbox:
            self.start_sandbox(network=network)
        self.run_init()
        for c in self.spec["containers"]:
            self.start_container(c["name"])

    def container_spec(self, name: str) -> Obj:
        for c in self.spec["containers"]:
            if c["name"] == name:
                spec: Obj = c
                return spec
        raise KeyError(name)

    def logs(self, name: str) -> str:
        proc = self.engine.run("logs", self.containers[name], check=False)
        return proc.stdout + proc.stderr

    def running(self, name: str) -> bool:
        proc = self.engine.run(
            "inspect", "-f", "{{.State.Running}}", self.containers[name], check=False
        )
        return proc.stdout.strip() == "true"

    def exec(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.engine.run("exec", self.containers[name], *argv, check=False)

    # -- probes ------------------------------------------------------------------------------

    def probe(self, name: str, kind: str) -> tuple[bool, str]:
        """One ``kind`` probe (livenessProbe, readinessProbe, startupProbe) of container
        ``name``, made from the pod's network like the kubelet's: (success, what it got)."""
        c = self.container_spec(name)
        get = c[kind]["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = {p["name"]: p["containerPort"] for p in c.get("ports", [])}[port]
        scheme = get.get("scheme", "HTTP").lower()
        url = f"{scheme}://{get.get('host', self.pod_ip)}:{port}{get['path']}"
        timeout = c[kind].get("timeoutSeconds", 1)
        return http_get_in_netns(self.netns_pid, url, timeout=timeout)

    def wait_probe(self, name: str, kind: str, *, timeout: float) -> str:
        """Wait until the probe succeeds; AssertionError with the last answer and the logs."""
        deadline = time.monotonic() + timeout
        ok, got = self.probe(name, kind)
        while not ok:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{kind} of {name} not green after {timeout:.0f}s: {got}\n"
                    f"--- logs of {name} ---\n{self.logs(name)[-3000:]}"
                )
            time.sleep(0.5)
            ok, got = self.probe(name, kind)
        return got

    # -- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the pod as a kubelet deletes it: every container's preStop hook, then SIGTERM,
        SIGKILL after what is left of the grace period. The sandbox goes last."""
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        deadline = time.monotonic() + grace

        def stop_one(name: str, container: str) -> None:
            hook = self.container_spec(name).get("lifecycle", {}).get("preStop", {}).get("exec")
            if hook:
                self.engine.run("exec", container, *hook["command"], check=False, timeout=grace + 5)
            left = max(0, round(deadline - time.monotonic()))
            self.engine.run("stop", "-t", str(left), container, check=False, timeout=grace + 30)

        threads = [
            threading.Thread(target=stop_one, args=(n, c)) for n, c in self.containers.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def remove(self) -> None:
        """Remove every container of this pod (and its sandbox)."""
        remove_labelled(self.engine, self.name)
        self.containers.clear()
        self.sandbox = ""


def remove_labelled(engine: Engine, pod: str | None = None) -> None:
    """Remove the containers of ``pod``, or of every pod this module started."""
    selector = f"label={LABEL}={pod}" if pod else f"label={LABEL}"
    ids = engine.run("ps", "-aq", "--filter", selector, check=False).stdout.split()
    if ids:
        engine.run("rm", "-f", *ids, check=False, timeout=120)


_GET = """
import ssl, sys, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]), context=ctx) as r:
        print(r.status, r.read(200).decode(errors="replace"))
except urllib.error.HTTPError as e:
    print(e.code, e.read(200).decode(errors="replace"))
except Exception as e:
    print(0, type(e).__name__, e)
"""


def http_get_in_netns(pid: int, url: str, *, timeout: float) -> tuple[bool, str]:
    """GET ``url`` from the network namespace of ``pid``, without verifying TLS (as the
    kubelet's probes): (status in 200..399, "status body")."""
    argv = ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", _GET, url, str(timeout)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
    out = (proc.stdout or proc.stderr).strip()
    try:
        status = int(out.split()[0])
    except (ValueError, IndexError):
        return False, out
    return 200 <= status < 400, out


def describe(argv: list[str]) -> str:
    """``docker run`` arguments as a shell line, for failure messages."""
    return shlex.join(argv)
