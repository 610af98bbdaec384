"""Kubernetes manifests from the spec and plan ``up`` uses: ``llmdock export k8s``.

``plan`` adapts a spec to a cluster and plans it (pure), ``render`` turns the plan into objects
(pure), ``validate`` checks them against the real schemas (the ``k8s`` extra).
"""
