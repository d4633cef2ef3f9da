"""raven-agent settings: flags override environment (``RAVEN_*``), which overrides defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from raven.model import (
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE,
    DEFAULT_VXLAN_PORT,
    DEFAULT_VXLAN_VNI,
    default_vxlan_dev,
)
from raven.names import DEFAULT_LEASE_NAMESPACE, POOL_LABEL


class AgentSettings(BaseSettings):
    """Everything the agent needs to know about its node and its cluster."""

    model_config = SettingsConfigDict(env_prefix="RAVEN_", extra="forbid")

    node_name: str = Field(
        min_length=1, description="This node's name (in a DaemonSet: spec.nodeName)"
    )
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig file; unset means in-cluster configuration"
    )
    state_dir: Path = Field(
        default=Path("/var/lib/raven"), description="Where the WireGuard key pair lives (0600)"
    )
    wg_interface: str = Field(
        default="raven0",
        min_length=1,
        max_length=15,
        description="WireGuard device name; must be unique on the host with wireguard-go",
    )
    pool_label: str = Field(default=POOL_LABEL, description="Node label naming the pool")
    vxlan_interface: str | None = Field(
        default=None,
        min_length=1,
        max_length=15,
        description=(
            "VXLAN device towards a pool gateway that is not on-link; default derived from"
            " wg_interface: its last 'wg' becomes 'vx' (rlwg3 -> rlvx3), else '-vx' is appended"
        ),
    )
    vxlan_vni: int = Field(
        default=DEFAULT_VXLAN_VNI, ge=1, le=2**24 - 1, description="VNI of Raven's VXLAN link"
    )
    vxlan_port: int = Field(
        default=DEFAULT_VXLAN_PORT,
        ge=1,
        le=65535,
        description="UDP port of Raven's VXLAN link (the same on every node of a pool)",
    )
    table: int = Field(
        default=DEFAULT_TABLE, ge=1, le=2**31 - 1, description="Raven's routing table id"
    )
    rule_priority: int = Field(
        default=DEFAULT_RULE_PRIORITY,
        ge=1,
        le=32765,
        description="Priority of Raven's one policy rule",
    )
    lease_namespace: str = Field(
        default=DEFAULT_LEASE_NAMESPACE, description="Namespace of the per-pool Leases"
    )
    lease_duration: float = Field(
        default=24.0,
        gt=0,
        description=(
            "Seconds a Lease stays valid without renewal (whole seconds). Beacons notice a"
            " crashed gateway long before; expiry is the fallback when no beacon was ever heard"
            " from the holder"
        ),
    )
    lease_renew: float = Field(
        default=8.0,
        gt=0,
        description="Seconds between renewals by the holder: the pool's only steady API writes",
    )
    lease_retry: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Seconds between looks at the watched Lease by the other candidates (no requests);"
            " a released Lease wakes them at once"
        ),
    )
    beacon_port: int = Field(
        default=10263, ge=1, le=65535, description="UDP port of the gateway beacons"
    )
    beacon_host: str = Field(
        default="0.0.0.0", description="Address the beacon socket binds (all addresses by default)"
    )
    beacon_interval: float = Field(
        default=0.25, gt=0, description="Seconds between the active gateway's beacons"
    )
    beacon_timeout: float = Field(
        default=1.25,
        gt=0,
        description=(
            "Seconds without a beacon from the active gateway after which the first-ranked"
            " candidate takes its Lease over (a crashed gateway is replaced after about this long)"
        ),
    )
    beacon_stagger: float = Field(
        default=0.25,
        ge=0,
        description="Extra seconds of patience per rank, so one candidate usually writes alone",
    )
    status_refresh: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Seconds between Gateway status writes when only probe figures (RTT, loss, handshake"
            " times) changed; any other change is written at once"
        ),
    )
    dead_tunnel_rounds: int = Field(
        default=3,
        ge=1,
        description=(
            "Probe rounds (2 s each) in a row without an answer from the relay after which the"
            " active edge gateway hands over to another ready candidate"
        ),
    )
    step_down_backoff: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a gateway that stepped down stays out of its pool's election",
    )
    health_host: str = Field(
        default="0.0.0.0", description="Address of /healthz, /readyz and /metrics"
    )
    health_port: int = Field(
        default=10262,
        ge=0,
        le=65535,
        description="Port of /healthz, /readyz and /metrics (0: no endpoint)",
    )
    log_format: str = Field(
        default="console",
        pattern="^(console|json)$",
        description="console (one readable line per record) or json (one object per line)",
    )
    resync: float = Field(
        default=10.0, gt=0, description="Seconds between full reconciles when nothing changed"
    )

    @property
    def vxlan_dev(self) -> str:
        """Raven's VXLAN device name: ``vxlan_interface``, or derived from ``wg_interface``."""
        return self.vxlan_interface or default_vxlan_dev(self.wg_interface)
