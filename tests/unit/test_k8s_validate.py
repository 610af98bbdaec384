"""Every shape `llmdock export k8s` renders, checked against the real schemas of every Kubernetes release
llmdock claims (kubernetes-validate, strict) and the LeaderWorkerSet CRD's own schema (vendored v0.9.0)."""

from __future__ import annotations

import copy

import pytest

from llmdock.k8s.validate import VERSIONS, lws_schema, problems
from tests.support.k8sshapes import SHAPES


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_is_valid_for_every_claimed_kubernetes(shape: str, version: str) -> None:
    assert problems(SHAPES[shape].docs(), version) == []


def test_the_vendored_lws_schema_says_where_it_comes_from() -> None:
    doc = lws_schema()
    assert doc["lws_version"] == "v0.9.0" and "kubernetes-sigs/lws" in doc["source"]
    assert "leaderWorkerTemplate" in doc["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_a_broken_manifest_is_reported_in_each_schema() -> None:
    """The checks would catch a renderer bug: an unknown field, a wrong type, in every kind."""
    docs = copy.deepcopy(SHAPES["multi-node"].docs())
    claim, lws, service = docs
    claim["spec"]["sizeGi"] = 10
    service["spec"]["ports"][0]["port"] = "http"
    lwt = lws["spec"]["leaderWorkerTemplate"]
    lwt["size"] = "2"
    lwt["leaderTemplate"]["spec"]["containers"][0]["gpus"] = 8
    lws["spec"]["groups"] = 1
    found = "\n".join(problems(docs, VERSIONS[-1]))
    for fragment in [
        "PersistentVolumeClaim/qwen72b-models: spec: Additional properties are not allowed ('sizeGi'",
        "Service/qwen72b: spec/ports/0/port: 'http' is not of type 'integer'",
        "LeaderWorkerSet/qwen72b: spec/leaderWorkerTemplate/size: '2' is not of type 'integer'",
        "LeaderWorkerSet/qwen72b: spec: Additional properties are not allowed ('groups'",
        "leaderTemplate as PodTemplateSpec: template/spec/containers/0: Additional properties are not allowed ('gpus'",
    ]:
        assert fragment in found
    deployment = copy.deepcopy(SHAPES["single-gpu"].docs())[1]
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = [1]
    assert problems([deployment], VERSIONS[0]) != []
