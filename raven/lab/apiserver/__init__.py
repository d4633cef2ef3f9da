"""The lab's embedded Kubernetes API server (``python -m raven.lab.apiserver``).

Layers, one direction: ``store`` (durable objects, resourceVersion, event history) and ``watch``
← ``api`` (verbs, kinds, CRDs; no HTTP) ← ``server`` (HTTPS, auth, discovery, tables) ←
``__main__``. Tests of other parts use
:func:`raven.lab.testing.apiserver.run_apiserver`.
"""
