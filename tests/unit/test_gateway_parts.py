"""Pure parts of the gateway: routing and balancing, keys and limits, error envelopes, SSE usage,
restart backoff, metrics text, key store and exposure rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmdock.errors import Conflict, InvalidSpec, LlmdockError, NotFound
from llmdock.gateway import wire
from llmdock.gateway.app import check_exposure, is_loopback
from llmdock.gateway.keys import Authenticator, KeyRecord, digest, generate
from llmdock.gateway.keystore import KeyStore, Usage, parse_duration
from llmdock.gateway.metrics import Metrics
from llmdock.gateway.quotas import Quota
from llmdock.gateway.routing import Policy, RouteTable, Target, parse_base, pick
from llmdock.gateway.sse import UsageMeter, strip_usage_event
from llmdock.gateway.supervisor import MAX_RESTARTS, Backoff, backoff_after, due_restart
from llmdock.state import Store


def target(dep: str, port: int, running: bool = True, served: str = "") -> Target:
    return Target(
        dep, served or dep, f"http://127.0.0.1:{port}", f"{dep}:{port}", running, aliases=(f"/m/{dep}",)
    )


# ---- routing --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8001", ("127.0.0.1", 8001, False, "")),
        ("http://127.0.0.1:8001/", ("127.0.0.1", 8001, False, "")),
        ("http://gpu-3", ("gpu-3", 80, False, "")),
        ("https://api.example.test/openai/", ("api.example.test", 443, True, "/openai")),
        ("http://[::1]:9000/x", ("::1", 9000, False, "/x")),
    ],
)
def test_parse_base(url: str, origin: tuple[str, int, bool, str]) -> None:
    assert parse_base(url) == origin


@pytest.mark.parametrize("url", ["127.0.0.1:8001", "ftp://h/", "http://", "http://h:port", ""])
def test_parse_base_refuses_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        parse_base(url)


def test_lookup_by_served_name_and_alias_and_least_outstanding() -> None:
    table = RouteTable()
    table.rebuild([target("qwen", 1, served="Qwen"), target("qwen", 2, served="Qwen")], {})
    route = table.lookup("Qwen")
    assert route is not None and table.lookup("/m/qwen") is route and table.lookup("nope") is None
    a, b = route.replicas
    assert pick(route.replicas) is None  # not yet probed healthy
    a.healthy = b.healthy = True
    a.outstanding = 3
    assert all(pick(route.replicas) is b for _ in range(5))
    b.outstanding = 3
    assert {id(pick(route.replicas)) for _ in range(10)} == {id(a), id(b)}  # ties rotate
    assert pick(route.replicas, frozenset({id(a), id(b)})) is None


def test_rebuild_keeps_replica_state_and_drops_health_when_stopped() -> None:
    table = RouteTable()
    table.rebuild([target("m", 1)], {})
    replica = table.routes["m"].replicas[0]
    replica.healthy, replica.outstanding = True, 2
    table.rebuild([target("m", 1)], {"m": Policy(on_demand=True)})
    assert table.routes["m"].replicas[0] is replica and replica.usable and replica.outstanding == 2
    assert table.routes["m"].policy.on_demand
    table.rebuild([target("m", 1, running=False)], {})
    assert not replica.healthy and table.servable() == []  # stopped and not on demand


def test_served_name_wins_over_an_alias() -> None:
    table = RouteTable()
    table.rebuild([target("a", 1, served="x"), Target("x", "y", "http://h:2", "k", True)], {})
    assert table.lookup("x") is table.routes["a"]


# ---- keys ----------------------------------------------------------------------------------------------
def test_keys_are_random_and_checked_by_hash() -> None:
    key, h = generate()
    assert key.startswith("sk-llmdock-") and len(key) > 40 and h == digest(key) and key not in h
    assert generate()[0] != key
    auth = Authenticator([KeyRecord("ci", h)])
    assert auth.check(f"Bearer {key}").name == "ci"
    for header in (None, "", "Basic x", f"Bearer {key}x", "Bearer "):
        with pytest.raises(wire.Unauthorized):
            auth.check(header)


def test_open_when_no_keys_and_admin_check() -> None:
    assert Authenticator().check(None).admin
    key, h = generate()
    auth = Authenticator([KeyRecord("u", h)])
    with pytest.raises(wire.Forbidden):
        auth.admin(f"Bearer {key}")


def test_model_allow_list() -> None:
    auth = Authenticator([])
    rec = KeyRecord("k", "h", models=("qwen",))
    with pytest.raises(wire.Forbidden):
        auth.authorize(rec, "llama", ("llama",))
    auth.authorize(rec, "q", ("q", "qwen"))  # an alias of an allowed deployment
    auth.authorize(rec, "qwen", ("qwen",))


# ---- wire and SSE --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (wire.BadRequest, 400),
        (wire.Unauthorized, 401),
        (wire.Forbidden, 403),
        (wire.ModelNotFound, 404),
        (wire.BodyTooLarge, 413),
        (wire.RateLimited, 429),
        (wire.NoReplica, 503),
        (wire.UpstreamTimeout, 504),
    ],
)
def test_error_envelope(cls: type[wire.GatewayError], status: int) -> None:
    e = cls("what happened", param="model")
    body = json.loads(e.body())
    assert e.status == status and body == {
        "error": {"message": "what happened", "type": cls.type, "param": "model", "code": cls.code}
    }


@pytest.mark.parametrize(
    ("chunks", "figures"),
    [
        ([b'{"id":"x","usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}'], (5, 8)),
        (
            [b'{"usage": {"prompt_tokens" : 7, "prompt_tokens_details": null, "completion_tokens":\n2}}'],
            (7, 2),
        ),
        (  # cumulative figures: the last in a chunk win
            [
                b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
                b'data: {"usage":{"prompt_tokens":1,"completion_tokens":9}}\n\n'
            ],
            (1, 9),
        ),
        ([b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4'], (3, 4)),
        ([b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":', b"41}}\n\n"], (3, 41)),
        ([b'{"choices":[{"message":{"content":"no usage here"}}]}'], (0, 0)),
    ],
    ids=["json", "spaces-and-details", "last-wins", "no-closing-brace", "number-in-next-chunk", "none"],
)
def test_usage_meter(chunks: list[bytes], figures: tuple[int, int]) -> None:
    meter = UsageMeter()
    for c in chunks:
        meter.feed(c)
    assert (meter.prompt_tokens, meter.completion_tokens) == figures


def test_usage_meter_finds_figures_split_across_chunks() -> None:
    meter = UsageMeter()
    meter.feed(b'data: {"choices":[{"delta":{}}],"usage":null}\n\n')
    meter.feed(b'data: {"choices":[],"usage":{"prompt_tok')
    meter.feed(b'ens":12,"completion_tokens":34}}\n\ndata: [DONE]\n\n')
    assert (meter.prompt_tokens, meter.completion_tokens) == (12, 34)


def test_strip_usage_event_keeps_other_events_in_order() -> None:
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}'
    content = b'data: {"choices": [{"delta": {"content": "x"}}], "usage": {"prompt_tokens": 1}}'
    assert strip_usage_event(usage + b"\n\ndata: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert strip_usage_event(usage + b"\n\n") == b""
    assert strip_usage_event(content + b"\n\n") == content + b"\n\n"


# ---- supervision ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "last", "attempts", "next_at", "gave_up", "decision"),
    [
        ("running", "ready", 0, 0, False, "none"),
        ("exited", "stopped", 0, 0, False, "none"),  # someone stopped it
        ("exited", "idle-stopped", 0, 0, False, "none"),
        ("exited", "ready", 0, 0, False, "restart"),
        ("dead", None, 1, 5, False, "wait"),
        ("exited", "restarted", MAX_RESTARTS, 0, False, "give-up"),
        ("exited", "gave-up", MAX_RESTARTS, 0, True, "none"),
    ],
)
def test_due_restart(
    state: str, last: str | None, attempts: int, next_at: float, gave_up: bool, decision: str
) -> None:
    assert due_restart(state, last, Backoff(attempts, next_at, gave_up), now=1.0) == decision


def test_backoff_doubles_up_to_a_bound() -> None:
    assert [backoff_after(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_after(30) == 60.0


# ---- metrics, key store, exposure ----------------------------------------------------------------------
def test_metrics_text() -> None:
    m = Metrics()
    m.done("qwen", "ci", 200, 0.003, 0.001, 5, 7)
    m.error("-", "ci", "model_not_found", 404)
    text = m.render()
    assert 'llmdock_requests_total{model="qwen",key="ci",status="200"} 1' in text
    assert 'llmdock_request_duration_seconds_bucket{model="qwen",key="ci",le="0.0025"} 0' in text
    assert 'llmdock_request_duration_seconds_bucket{model="qwen",key="ci",le="0.005"} 1' in text
    assert 'llmdock_tokens_total{model="qwen",key="ci",kind="completion"} 7' in text
    assert 'llmdock_errors_total{model="-",key="ci",code="model_not_found"} 1' in text


def test_keystore_keys_usage_policies(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        ks = KeyStore(store)
        key = ks.create("ci", models=("qwen",), quota=Quota(rpm=60))
        ks.create("ops", admin=True)
        assert [r.name for r in ks.active()] == ["ci", "ops"] and ks.active()[0].hash == digest(key)
        with pytest.raises(Conflict):
            ks.create("ci")
        with pytest.raises(InvalidSpec):
            ks.create("bad name")
        ks.revoke("ci")
        with pytest.raises(NotFound):
            ks.revoke("ci")
        assert [k.name for k in ks.list_keys()] == ["ops"] and len(ks.list_keys(include_revoked=True)) == 2
        ks.add_usage({("ci", "qwen", 100): Usage(1, 0, 5, 7)})
        ks.add_usage({("ci", "qwen", 100): Usage(2, 1, 5, 7), ("ci", "qwen", 200): Usage(1, 0, 1, 1)})
        assert ks.usage() == [("ci", "qwen", Usage(4, 1, 11, 15))]
        assert ks.usage(since=200 * 60) == [("ci", "qwen", Usage(1, 0, 1, 1))]
        ks.set_policy("m", Policy(True, 60.0))
        assert ks.policies() == {"m": Policy(True, 60.0)}
        ks.set_policy("m", Policy())
        assert ks.policies() == {}
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"api_keys", "usage", "gateway_policies"} <= tables
    finally:
        store.close()


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "15m", "2h", "1d")] == [90, 90, 900, 7200, 86400]
    for bad in ("soon", "0", "-5m", "nan", "infs"):
        with pytest.raises(InvalidSpec):
            parse_duration(bad)


def test_exposure_rule() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    check_exposure("127.0.0.1", insecure=False, has_keys=False)
    check_exposure("0.0.0.0", insecure=False, has_keys=True)
    check_exposure("0.0.0.0", insecure=True, has_keys=False)
    with pytest.raises(LlmdockError, match="without any API key"):
        check_exposure("0.0.0.0", insecure=False, has_keys=False)


def test_route_objects_survive_rebuilds_so_in_flight_counts_stay_true() -> None:
    table = RouteTable()
    table.rebuild([target("m", 1)], {})
    route = table.routes["m"]
    route.outstanding += 1  # a request starts
    table.rebuild([target("m", 1)], {"m": Policy(idle_stop_s=5)})
    route.outstanding -= 1  # and ends after the rebuild
    assert table.routes["m"] is route and route.outstanding == 0 and route.policy.idle_stop_s == 5
    restarted = Target("m", "m", "http://127.0.0.1:1", "m:1", True, started_at="later")
    route.replicas[0].healthy = True
    table.rebuild([restarted], {})
    assert not route.replicas[0].healthy  # a new process is probed before it gets traffic


def test_a_served_name_two_deployments_claim_goes_to_the_ready_one() -> None:
    from llmdock.gateway.routing import Policy, RouteTable, Target

    def target(dep: str, port: int, running: bool) -> Target:
        return Target(
            deployment=dep,
            served_name="/work/m",
            base_url=f"http://127.0.0.1:{port}",
            key=dep,
            running=running,
            health_path="/health",
            aliases=(dep,),
        )

    table = RouteTable()
    table.rebuild([target("old", 1, False), target("new", 2, True)], {})
    table.routes["new"].replicas[0].healthy = True
    assert table.lookup("/work/m").name == "new"  # type: ignore[union-attr]
    table.rebuild([target("new", 2, True), target("old", 1, False)], {"old": Policy()})
    assert table.lookup("/work/m").name == "new"  # type: ignore[union-attr]
    assert table.lookup("old").name == "old"  # type: ignore[union-attr]


def test_an_authenticator_that_requires_a_key_refuses_when_none_exist() -> None:
    from llmdock.gateway.keys import ANONYMOUS, Authenticator
    from llmdock.gateway.wire import Unauthorized

    assert Authenticator().check(None) is ANONYMOUS  # loopback, no keys: open
    with pytest.raises(Unauthorized, match="keys create"):
        Authenticator(require_key=True).check(None)


def test_usage_that_could_not_be_written_is_kept() -> None:
    from llmdock.gateway.proxy import UsageBuffer

    buf = UsageBuffer()
    buf.add("k", "m", False, 10, 5)
    batch = buf.take()
    buf.add("k", "m", True, 1, 0)  # arrives while the write fails
    buf.restore(batch)
    slots = buf.take().values()  # one slot, or two if a minute boundary fell in between
    totals = [
        sum(getattr(u, f) for u in slots)
        for f in ("requests", "errors", "prompt_tokens", "completion_tokens")
    ]
    assert totals == [2, 1, 11, 5]


def test_a_shared_alias_names_no_deployment_and_names_route_each() -> None:
    # Two deployments of one hub model and one of another: the hub id names a deployment only when unique.
    table = RouteTable()
    table.rebuild(
        [
            Target("q-a", "q-a", "http://h:1", "a", True, aliases=("Qwen/Qwen3-8B",)),
            Target("q-b", "q-b", "http://h:2", "b", True, aliases=("Qwen/Qwen3-8B",)),
            Target("l", "l", "http://h:3", "c", True, aliases=("meta/Llama",)),
        ],
        {},
    )
    assert table.lookup("Qwen/Qwen3-8B") is None
    assert table.lookup("q-a") is table.routes["q-a"] and table.lookup("q-b") is table.routes["q-b"]
    assert table.lookup("meta/Llama") is table.routes["l"]


def test_docker_source_names_routes_by_deployment_never_by_weights_folder() -> None:
    from llmdock.gateway.keys import KeyRecord
    from llmdock.gateway.supervisor import DockerSource
    from llmdock.runtimes.base import Deployment

    def dep(name: str, model: str, **kw: object) -> Deployment:
        return Deployment(name=name, model=model, port=8000, served_name=name, state="running", **kw)  # type: ignore[arg-type]

    class Listing:
        def deployments(self) -> list[Deployment]:
            return [
                dep("tq-int", "/data/tiny-qwen"),
                dep("tq-hub", "/data/tiny-qwen"),
                dep("q", "Qwen/Qwen3-8B"),
            ]

    table = RouteTable()
    table.rebuild(DockerSource(Listing()).targets(), {})
    assert table.routes["tq-int"].aliases == () and table.routes["q"].aliases == ("Qwen/Qwen3-8B",)
    assert table.lookup("tiny-qwen") is None and table.lookup("/data/tiny-qwen") is None
    key = KeyRecord("team", "h", models=("tiny-qwen",))
    assert not any(key.allows(r.names) for r in table.routes.values())
    scoped = KeyRecord("team", "h", models=("tq-int",))
    assert [r.name for r in table.routes.values() if scoped.allows(r.names)] == ["tq-int"]
