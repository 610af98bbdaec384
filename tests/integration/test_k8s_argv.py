"""The argv `llmdock export k8s` puts in each vLLM manifest parses, as meant, with the real parser of the
vLLM in the test image (one throwaway container reads every shape's argv, the LeaderWorkerSet leader's
`--pipeline-parallel-size 2 --distributed-executor-backend ray` included)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.k8sshapes import SHAPES

# Runs in the image: vLLM's own `vllm serve` parser (FlexibleArgumentParser + the serve subcommand).
PARSE = """
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.cli.serve import ServeSubcommand
top = FlexibleArgumentParser(prog="vllm")
ServeSubcommand().subparser_init(top.add_subparsers(dest="subparser"))
out = {}
for shape, argv in json.loads(sys.argv[1]).items():
    a = top.parse_args(argv)
    out[shape] = {k: getattr(a, k) for k in ("model_tag", "host", "port", "tensor_parallel_size",
        "pipeline_parallel_size", "distributed_executor_backend", "max_model_len", "served_model_name")}
print(json.dumps(out))
"""


@pytest.mark.docker
@pytest.mark.slow
def test_every_k8s_argv_parses_with_the_image_vllm(docker_client: Any) -> None:
    from llmdock.demo.image import VLLM_TAG, ensure_engine_image

    image = ensure_engine_image(docker_client, VLLM_TAG, log=lambda _: None)
    plans = {name: shape.plan() for name, shape in SHAPES.items()}
    argvs = {name: kp.plan.argv[1:] for name, kp in plans.items()}  # after `vllm`
    raw = docker_client.containers.run(
        image,
        ["python3", "-c", PARSE, json.dumps(argvs)],
        entrypoint=[],
        environment={"VLLM_TARGET_DEVICE": "cpu"},
        name="k8s-argv-check",
        remove=True,
        network_mode="none",
    )
    parsed = json.loads(raw.decode().strip().splitlines()[-1])
    for name, kp in plans.items():
        got = parsed[name]
        assert (
            got["model_tag"] == kp.plan.argv[2] and got["host"] == "0.0.0.0" and got["port"] == kp.plan.port
        )
        assert got["tensor_parallel_size"] == (kp.plan.tensor_parallel_size or 1)
        assert got["pipeline_parallel_size"] == kp.nodes
        assert got["distributed_executor_backend"] == ("ray" if kp.multi_node else None)
        assert got["served_model_name"][0] == kp.plan.served_name
