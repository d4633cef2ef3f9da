"""The gateway's WireGuard device, driven through ``ip``, ``wg`` and (without the kernel module)
``wireguard-go``.

:class:`WireGuardDevice` makes sure the device exists (kernel ``type wireguard`` first, else a
``wireguard-go`` started in the target namespace), carries this node's key pair and listen port,
is up with the wanted MTU, and holds exactly the desired peers. Peers are diffed against
``wg show IF dump`` and only the difference is sent, in a single ``wg set`` (``wg_set_calls``
counts them, so a reconcile with nothing to change costs none). A peer whose spec has no endpoint
keeps whatever endpoint WireGuard learned from its handshakes.

wireguard-go's control sockets live host-wide in ``/var/run/wireguard``, so device names must be
unique on the host; its PID is found from ``/proc`` by its exact command line, so a restarted
agent can still stop it. The private key never appears in an argument list, log or exception:
``wg`` reads it from the 0600 key file, and :func:`parse_dump` drops it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway import keys
from gateway.dump import DeviceStatus, WireGuardError, parse_dump
from raven.model import PeerSpec

WG_RUN_DIR = Path("/var/run/wireguard")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass
class PeerChanges:
    added: list[str] = field(default_factory=list)  # public keys
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.updated or self.removed)


def _norm_cidrs(peer: PeerSpec) -> tuple[str, ...]:
    out = set()
    for cidr in peer.allowed_ips:
        try:
            out.add(ipaddress.ip_network(cidr, strict=False).with_prefixlen)
        except ValueError:
            raise WireGuardError(
                f"peer {peer.public_key}: allowed IP {cidr!r} is not a CIDR"
            ) from None
    return tuple(sorted(out))


def _norm_endpoint(peer: PeerSpec) -> str | None:
    """``ip:port`` as ``wg show`` prints it. A host name is never resolved here (that would
    block a reconcile): the agent resolves names before it plans peers, off its loop, and a
    name that reaches this point is passed to ``wg`` as it is."""
    ep = peer.endpoint
    if ep is None:
        return None
    host, sep, port = ep.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise WireGuardError(f"peer {peer.public_key}: endpoint {ep!r} is not host:port")
    host = host.strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return ep
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _check_peer(peer: PeerSpec) -> None:
    if not keys.valid_public_key(peer.public_key):
        raise WireGuardError(f"peer public key {peer.public_key!r} is not a WireGuard key")
    if not 0 <= peer.persistent_keepalive <= 65535:
        raise WireGuardError(
            f"peer {peer.public_key}: persistent_keepalive {peer.persistent_keepalive} "
            "is outside 0..65535"
        )


def peer_args(desired: Iterable[PeerSpec], current: DeviceStatus) -> tuple[list[str], PeerChanges]:
    """The ``wg set`` arguments (after the device name) that turn ``current`` into
    ``desired``, and what they change. Empty when nothing differs. Pure."""
    want: dict[str, PeerSpec] = {}
    for peer in desired:
        _check_peer(peer)
        if peer.public_key in want:
            raise WireGuardError(f"peer {peer.public_key} appears twice")
        want[peer.public_key] = peer
    have = {p.public_key: p for p in current.peers}
    args: list[str] = []
    changes = PeerChanges()
    for pk in sorted(have.keys() - want.keys()):
        args += ["peer", pk, "remove"]
        changes.removed.append(pk)
    for pk in sorted(want):
        spec = want[pk]
        allowed = _norm_cidrs(spec)
        endpoint = _norm_endpoint(spec)
        now = have.get(pk)
        if now is not None and (
            now.allowed_ips == allowed
            and now.persistent_keepalive == spec.persistent_keepalive
            # None = whatever WireGuard learned from handshakes; never overwrite that.
            and (endpoint is None or now.endpoint == endpoint)
        ):
            continue
        args += ["peer", pk, "allowed-ips", ",".join(allowed)]
        args += ["persistent-keepalive", str(spec.persistent_keepalive or "off")]
        if spec.endpoint is not None:
            args += ["endpoint", spec.endpoint]
        (changes.updated if now is not None else changes.added).append(pk)
    return args, changes


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def find_wireguard_go(name: str) -> int | None:
    """PID of the ``wireguard-go NAME`` process serving device ``name``, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw if a]
        if (
            len(argv) >= 2
            and os.path.basename(argv[0]) == "wireguard-go"
            and argv[-1] == name
            and process_alive(int(entry.name))
        ):
            return int(entry.name)
    return None


class WireGuardDevice:
    """One WireGuard interface of this node, reconciled through ``ip``/``wg``.

    ``netns`` runs every command through ``ip netns exec NS`` (tests, the lab); the agent,
    which already runs inside its node's namespace, leaves it None.
    """

    def __init__(
        self,
        name: str,
        *,
        state_dir: str | os.PathLike[str],
        netns: str | None = None,
        wireguard_go: str = "wireguard-go",
    ) -> None:
        if not _IFNAME.match(name):
            raise WireGuardError(f"interface name {name!r} is not a valid Linux name (1-15 chars)")
        self.name = name
        self.state_dir = Path(state_dir)
        self.netns = netns
        self.wireguard_go = wireguard_go
        self.wg_set_calls = 0  # every `wg set`, so "nothing to change" can be checked
        self.link_writes = 0  # every `ip link add/set/del`
        self._keys: keys.KeyPair | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _cmd(self, args: Sequence[str]) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(args)

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self._cmd(args), capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise WireGuardError(
                f"`{' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def _wg_set(self, args: Sequence[str]) -> None:
        self.wg_set_calls += 1
        self._run(["wg", "set", self.name, *args])

    # -- device -----------------------------------------------------------------------------

    @property
    def keys(self) -> keys.KeyPair:
        """This node's key pair, made on first use and kept in ``state_dir``."""
        if self._keys is None:
            self._keys = keys.load_or_create(self.state_dir)
        return self._keys

    @property
    def public_key(self) -> str:
        return self.keys.public_key

    @property
    def pid(self) -> int | None:
        """The wireguard-go process serving this device (None with the kernel module)."""
        return find_wireguard_go(self.name)

    def link(self) -> dict | None:
        """``ip -j -d link show`` for the device, or None when it does not exist."""
        proc = self._run(["ip", "-j", "-d", "link", "show", "dev", self.name], check=False)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout or "[]")
        return data[0] if data else None

    def exists(self) -> bool:
        return self.link() is not None

    def _create(self) -> None:
        add = self._run(["ip", "link", "add", self.name, "type", "wireguard"], check=False)
        self.link_writes += 1
        if add.returncode == 0:
            return
        # No kernel module: the userspace implementation. A stale socket (from a crashed
        # wireguard-go) would block it; nobody serves it, so it is safe to remove.
        sock = WG_RUN_DIR / f"{self.name}.sock"
        if sock.exists() and find_wireguard_go(self.name) is None:
            sock.unlink(missing_ok=True)
        # It daemonizes: the command returns once the device is up and the child serves it.
        go = self._run([self.wireguard_go, self.name], check=False)
        if go.returncode != 0 or not self.exists():
            raise WireGuardError(
                f"cannot create WireGuard device {self.name}: kernel says "
                f"{add.stderr.strip()!r}; wireguard-go says {(go.stderr or go.stdout).strip()!r}"
            )

    def ensure(self, *, listen_port: int | None = None, mtu: int | None = None) -> bool:
        """Device present, keyed, listening on ``listen_port``, ``mtu`` set and up.
        Returns True when anything had to change."""
        if listen_port is not None and not 0 < listen_port < 65536:
            raise WireGuardError(f"listen_port {listen_port} is outside 1..65535")
        if mtu is not None and not 1280 <= mtu <= 65535:
            raise WireGuardError(f"tunnel mtu {mtu} is outside 1280..65535")
        changed = False
        link = self.link()
        if link is None:
            self._create()
            changed = True
            link = self.link() or {}
        status = self._dump_or_none()
        if status is None:
            raise WireGuardError(f"interface {self.name} exists but is not a WireGuard device")
        args: list[str] = []
        if status.public_key != self.public_key:
            args += ["private-key", str(self.keys.path)]
        if listen_port is not None and status.listen_port != listen_port:
            args += ["listen-port", str(listen_port)]
        if args:
            self._wg_set(args)
            changed = True
        link_args: list[str] = []
        if mtu is not None and link.get("mtu") != mtu:
            link_args += ["mtu", str(mtu)]
        if "UP" not in link.get("flags", []):
            link_args += ["up"]
        if link_args:
            self.link_writes += 1
            self._run(["ip", "link", "set", "dev", self.name, *link_args])
            changed = True
        return changed

    # -- peers ------------------------------------------------------------------------------

    def _dump_or_none(self) -> DeviceStatus | None:
        proc = self._run(["wg", "show", self.name, "dump"], check=False)
        return parse_dump(proc.stdout) if proc.returncode == 0 else None

    def dump(self) -> DeviceStatus:
        """The device's current state (for status reporting and diffing)."""
        status = self._dump_or_none()
        if status is None:
            raise WireGuardError(f"WireGuard device {self.name} does not exist")
        return status

    def reconcile_peers(self, desired: Iterable[PeerSpec]) -> PeerChanges:
        """Make the device hold exactly ``desired``; at most one ``wg set``, none if equal."""
        args, changes = peer_args(desired, self.dump())
        if args:
            self._wg_set(args)
        return changes

    # -- teardown ---------------------------------------------------------------------------

    def stop(self, *, timeout: float = 5.0) -> bool:
        """Stop the wireguard-go serving this device (by PID) or delete the kernel link.
        True when something was there. A link of this name that is not a WireGuard device is
        not ours and is left alone. The key file stays (see :meth:`teardown`)."""
        pid = self.pid
        ours = self._dump_or_none() is not None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
                while process_alive(pid) and time.monotonic() < deadline + timeout:
                    time.sleep(0.02)
        if ours and self.link() is not None:
            self.link_writes += 1
            self._run(["ip", "link", "del", "dev", self.name])
        return pid is not None or ours

    def restart(self, **ensure_kwargs: int | None) -> None:
        """Stop and recreate the device (e.g. after wireguard-go misbehaved). Peers must be
        reconciled again afterwards."""
        self.stop()
        self.ensure(**ensure_kwargs)  # type: ignore[arg-type]

    def teardown(self, *, remove_keys: bool = False) -> bool:
        """Remove the device (and its wireguard-go); with ``remove_keys`` the key file too."""
        changed = self.stop()
        if remove_keys:
            changed = keys.remove(self.state_dir) or changed
            self._keys = None
        return changed
