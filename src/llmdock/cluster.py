"""Start and remove a multi-node deployment (:mod:`llmdock.planning.nodes`) through each host's runtime.

``up`` starts the head, waits until its Ray is up, starts the workers, waits until the head's
``ray status`` counts every node (the head prints it: :data:`~llmdock.engines.vllm.READY_LINE`),
then waits for vLLM on the head to answer its health check. Anything failing on the way removes what
was started, so a half cluster is never left behind; the error says which node and why (its log
tail). With the ``mp`` executor there is no Ray step: the head and the workers start, then the head
is waited for.

Example::

    deployer = ClusterDeployer(lambda host: runtimes.named(member_key("docker", host)))
    deployer.up(launch(plan, nodes, executor="ray"), timeout=900)
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmdock.engines.vllm import RAY_PORT
from llmdock.errors import EngineFailed, LlmdockError, ReadinessTimeout
from llmdock.planning.nodes import ClusterLaunch, NodeLaunch
from llmdock.runtimes.base import Runtime

POLL_S = 0.5
TAIL = 200
_SEEN = re.compile(r"llmdock: ray cluster (\d+)/(\d+) nodes")


def node_address(address: str | None, peer: str) -> str:
    """The IP the other nodes reach a node at (``VLLM_HOST_IP``, Ray's ``--node-ip-address``): a
    host's own SSH address resolved, or for this host (``None``) the source address its route to
    ``peer`` (another node) uses. No packet is sent."""
    import socket

    from llmdock.errors import InvalidSpec

    try:
        if address is not None:
            return str(socket.getaddrinfo(address, None, socket.AF_INET)[0][4][0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(peer), 9))
            return str(s.getsockname()[0])
    except OSError as e:
        raise InvalidSpec(
            f"no IPv4 address for node {address or 'local'} (toward {peer}): {e}",
            "give each host by an address the others reach (`llmdock hosts add NAME ssh://USER@IP`)",
        ) from e


def nodes_seen(lines: list[str]) -> int:
    """The last node count the Ray head printed (0: none yet)."""
    counts = [int(m.group(1)) for line in lines if (m := _SEEN.search(line))]
    return counts[-1] if counts else 0


@dataclass
class ClusterDeployer:
    runtime_for: Callable[[str], Runtime]  # a node's host -> its runtime
    poll_s: float = POLL_S

    def up(
        self,
        cl: ClusterLaunch,
        *,
        timeout: float = 900,
        ready: Callable[[Runtime, NodeLaunch, float], object] | None = None,
    ) -> None:
        """Start ``cl``'s nodes and wait for the Ray cluster (and, given ``ready``, the engine on the
        head: ``ready(runtime, head, seconds_left)``). Removes every started node on any failure."""
        deadline = time.monotonic() + timeout
        started: list[NodeLaunch] = []
        try:
            self._start(cl.head, started)
            if cl.executor == "ray":
                self.wait_nodes(cl, 1, deadline)
            for node in cl.workers:
                self._start(node, started)
            if cl.executor == "ray":
                self.wait_nodes(cl, len(cl.nodes), deadline)
            if ready is not None:
                ready(self.runtime_for(cl.head.host), cl.head, max(deadline - time.monotonic(), 1))
        except BaseException:
            with contextlib.suppress(LlmdockError):  # the failure that got here is the one to tell
                self.remove(started)
            raise

    def _start(self, node: NodeLaunch, started: list[NodeLaunch]) -> None:
        rt = self.runtime_for(node.host)
        rt.create(node.container)
        started.append(node)

    def wait_nodes(self, cl: ClusterLaunch, want: int, deadline: float) -> None:
        """Until the head's ``ray status`` counts ``want`` nodes; a node that exits meanwhile fails it."""
        head_rt = self.runtime_for(cl.head.host)
        while True:
            lines = list(head_rt.logs(cl.head.name, tail=TAIL))
            if nodes_seen(lines) >= want:
                return
            for node in cl.nodes:
                dep = self.runtime_for(node.host).get(node.name)
                if dep is not None and dep.state in ("exited", "dead", "restarting"):
                    tail = list(self.runtime_for(node.host).logs(node.name, tail=30))
                    raise EngineFailed(
                        f"Ray {node.role} {node.name!r} on host {node.host} exited while the cluster formed "
                        f"({nodes_seen(lines)}/{len(cl.nodes)} nodes)",
                        f"read its log (`llmdock logs {node.name}`): every node must reach "
                        f"{cl.head.address}:{RAY_PORT}, and the head's address must be this node's own",
                        tail,
                    )
            if time.monotonic() >= deadline:
                raise ReadinessTimeout(
                    f"the Ray cluster of {cl.name!r} has {nodes_seen(lines)} of {want} nodes",
                    f"each worker must reach the head at {cl.head.address}:{RAY_PORT} (firewalls, --host addresses)",
                )
            time.sleep(self.poll_s)

    def remove(self, nodes: list[NodeLaunch] | tuple[NodeLaunch, ...]) -> None:
        """Remove ``nodes`` (workers first); one that is gone already, or whose host cannot be
        reached, does not stop the others from being removed."""
        errors: list[LlmdockError] = []
        for node in reversed(list(nodes)):
            try:
                rt = self.runtime_for(node.host)
                if rt.get(node.name) is not None:
                    rt.remove(node.name, force=True)
            except LlmdockError as e:
                errors.append(e)
        if errors:
            raise errors[0]
