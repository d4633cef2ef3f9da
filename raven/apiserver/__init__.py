"""The lab's embedded Kubernetes API server (``python -m raven.apiserver``).

Layers, one direction: ``store`` (durable objects, resourceVersion, event history) and ``watch``
← ``api`` (verbs, kinds, CRDs; no HTTP) ← ``server`` (HTTPS, auth, discovery, tables) ←
``__main__`` / ``testing``. Tests of other parts use :func:`raven.apiserver.testing.run_apiserver`.
"""
