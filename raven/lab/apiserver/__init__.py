"""The lab's embedded Kubernetes API server (``python -m raven.lab.apiserver``).

Layers, one direction: ``store`` (durable objects, resourceVersion, event history, expiry) and
``watch`` ← ``api`` (verbs, kinds, CRDs; with ``kinds``, ``strategy``, ``validation`` and
``limits``; no HTTP) ← ``server`` (HTTPS, then ``authn`` → impersonation → ``rbac`` → routing,
discovery, tables, ``reviews``, ``audit``) ← ``__main__``. ``requestinfo`` and ``rbac`` are pure.
Tests of other parts use :func:`raven.lab.testing.apiserver.run_apiserver`.
"""
