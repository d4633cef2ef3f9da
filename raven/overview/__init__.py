"""The operator's views of a cluster: ``raven status`` and ``raven graph``.

:mod:`raven.overview.cluster` turns the objects (Nodes, Gateways, Events, Leases) into one
:class:`~raven.overview.cluster.Overview` value (pure); :mod:`raven.overview.dot` and
:mod:`raven.overview.tables` render it; :mod:`raven.overview.fetch` reads the objects and
:mod:`raven.overview.agent` reaches an agent's ``/status``; :mod:`raven.overview.cli` wires them.
"""
