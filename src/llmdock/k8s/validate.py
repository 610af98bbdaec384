"""Manifests checked against the real schemas: Kubernetes' own OpenAPI schemas for core and apps
objects (``kubernetes-validate``, which bundles them per Kubernetes release, strict: unknown fields are
errors), and the LeaderWorkerSet CRD's OpenAPI v3 schema (with ``jsonschema``), whose pod templates are
also checked as core ``v1`` PodTemplateSpecs, strictly.

The CRD schema is vendored in ``lws-v0.9.0.schema.json.gz``: the ``openAPIV3Schema`` of version ``v1``
in ``config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml`` of kubernetes-sigs/lws at tag
v0.9.0 (commit f056f611ae7721f9983ac35f26bfbae8547fd9f3); the file records its source beside it.

Needs the ``k8s`` extra (``pip install 'llmdock[k8s]'``); imported lazily.

Example::

    problems(manifests(plan), "1.32")   # [] when every object is valid for Kubernetes 1.32
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from importlib import resources
from typing import Any

# The releases llmdock claims its manifests for (kubernetes-validate bundles 1.25 to 1.37).
VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
LWS_SCHEMA = "lws-v0.9.0.schema.json.gz"


@cache
def lws_schema() -> dict[str, Any]:
    """The vendored CRD schema document: ``source``, ``commit``, ``lws_version``, ``openAPIV3Schema``."""
    raw = resources.files("llmdock.k8s").joinpath(LWS_SCHEMA).read_bytes()
    data: dict[str, Any] = json.loads(gzip.decompress(raw))
    return data


def _strict(node: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does (a
    structural CRD schema would otherwise prune them silently); fields it keeps as they are
    (``x-kubernetes-preserve-unknown-fields``) stay open."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def problems(docs: list[dict[str, Any]], version: str) -> list[str]:
    """Every schema violation of ``docs`` for Kubernetes ``version``, as ``Kind/name: path: message``."""
    out: list[str] = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion", "").startswith("leaderworkerset.x-k8s.io/"):
            out += [f"{where}: {p}" for p in _lws_problems(doc, version)]
        else:
            out += [f"{where}: {p}" for p in _core_problems(doc, version)]
    return out


def _core_problems(doc: dict[str, Any], version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:  # the first violation only: it stops there
        return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []


def _lws_problems(doc: dict[str, Any], version: str) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(_strict(lws_schema()["openAPIV3Schema"]))
    out = [
        f"{'/'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message}"
        for err in validator.iter_errors(doc)
    ]
    template = doc.get("spec", {}).get("leaderWorkerTemplate", {})
    for role in ("leaderTemplate", "workerTemplate"):
        if role in template:
            pod = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": role},
                "template": template[role],
            }
            out += [
                f"spec/leaderWorkerTemplate/{role} as PodTemplateSpec: {p}"
                for p in _core_problems(pod, version)
            ]
    return out
