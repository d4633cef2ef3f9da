"""The gateway role: WireGuard device and peers, relay mode, tunnel health, Gateway status."""
