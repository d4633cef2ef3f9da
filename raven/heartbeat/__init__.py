"""``raven-heartbeat``: keeps a node's heartbeat reaching the cloud when the node lost its own
uplink but not its pool's LAN, through a pool member that still reaches the cloud.

- :mod:`~raven.heartbeat.decide` (pure): debounced probe verdicts, relay choice, path, Lease
  marks, Events.
- :mod:`~raven.heartbeat.probes`: the direct probe, the kubelet's health, the pool's relays, the
  agent's role.
- :mod:`~raven.heartbeat.admission` (pure) and :mod:`~raven.heartbeat.relay`: the gateway side,
  an HTTP CONNECT relay to the API server's address only, for the pool's members only.
- :mod:`~raven.heartbeat.members`: the pool's members from a Node list+watch.
- :mod:`~raven.heartbeat.report`: the Lease marks, Events and optional taint, retried until done.
- :mod:`~raven.heartbeat.runtime` and ``__main__``: the process.
"""
