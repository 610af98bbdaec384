"""`llmdock apply`: the whole file checked with positions, diffs, idempotence, prune, export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdock import settings
from llmdock.apply import Desired, carry_out, current, diff, export, load
from llmdock.errors import InvalidSpec
from llmdock.gateway.keystore import KeyStore
from llmdock.lifecycle import Lifecycle
from tests.support.memruntime import memory_lifecycle

IMAGE = settings.KEYS["image.transformers"].default


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("deployments:\n  - name: a\n    model: [x\n", ["llmdock.yaml:4:1", "not valid YAML"]),
        (
            "deployments:\n  - name: a\n    model: /m\n    colour: red\n",
            ["llmdock.yaml:4:5", "colour", "Extra inputs"],
        ),
        ("deployments:\n  - name: a\n    model: /m\n    port: many\n", ["llmdock.yaml:4:5", "port"]),
        (
            "deployments:\n  - {name: a, model: /m}\n  - {name: a, model: /n}\n",
            ["llmdock.yaml:3:5", "named twice"],
        ),
        ("deployments:\n  - {name: a/b, model: /m}\n", ["llmdock.yaml:2:5", "name 'a/b' is not allowed"]),
        ("keys:\n  - {name: k, rpm: 0}\n", ["llmdock.yaml:2:15", "rpm"]),
        ("version: 2\n", ["llmdock.yaml:1:1", "version"]),
        ("- a\n- b\n", ["llmdock.yaml:1:1: the file:", "valid dictionary"]),
        ("deployments: []\n\x00", ["not valid YAML: unacceptable character"]),
    ],
)
def test_an_invalid_file_is_refused_whole_with_positions(text: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidSpec) as e:
        load(text)
    for fragment in fragments:
        assert fragment in e.value.message, e.value.message
    assert "nothing was changed" in e.value.hint


def test_every_error_of_a_file_is_listed() -> None:
    text = "deployments:\n  - {name: a, model: /m, replicas: 0}\n  - {name: b, model: /m, engine: tgi}\n"
    with pytest.raises(InvalidSpec) as e:
        load(text)
    assert "llmdock.yaml:2:" in e.value.message and "llmdock.yaml:3:" in e.value.message


@pytest.fixture
def lc(tmp_path: Path) -> Lifecycle:
    return memory_lifecycle(tmp_path / "home", IMAGE)


def file(model: str, **over: object) -> str:
    dtype = over.get("dtype", "auto")
    extra = "\n".join(f"    {k}: {v}" for k, v in over.items() if k != "dtype")
    return (
        "deployments:\n"
        f"  - name: a\n    model: {model}\n    engine: transformers\n    dtype: {dtype}\n{extra}\n"
        f"  - name: b\n    model: {model}\n    engine: transformers\n    idle_stop: 30m\n"
        "keys:\n  - name: team\n    models: [a]\n    rpm: 60\n"
    )


def plan_and_apply(lc: Lifecycle, text: str, prune: bool = False) -> tuple[list[str], dict[str, str]]:
    ks = KeyStore(lc.store)
    desired: Desired = load(text)
    changes = diff(desired, current(lc, ks), lc.resolve, prune=prune)
    secrets = carry_out(changes, desired, lc, ks, wait=False, timeout=5, say=lambda _: None)
    return [str(c) for c in changes], secrets


def test_apply_creates_then_is_idempotent_then_changes_fields_then_prunes(lc: Lifecycle, model: str) -> None:
    changes, secrets = plan_and_apply(lc, file(model))
    assert changes == [
        "+ deployment a",
        "+ deployment b",
        "~ policy b (idle_stop_s: None -> 1800.0)",
        "+ key team",
    ]
    assert secrets["team"].startswith("sk-llmdock-")
    assert {d.name for d in lc.ps()} == {"a", "b"}
    assert plan_and_apply(lc, file(model)) == ([], {})  # the same file again: nothing

    changed, _ = plan_and_apply(lc, file(model, dtype="float32").replace("rpm: 60", "rpm: 90"))
    assert changed == ["~ deployment a (dtype: 'auto' -> 'float32')", "~ key team (rpm: 60 -> 90)"]
    assert lc.get("a").spec["dtype"] == "float32"
    keys = KeyStore(lc.store).list_keys()
    assert [(k.name, k.quota.rpm) for k in keys] == [("team", 90)]  # changed in place: the same secret

    only_a = "deployments:\n" + file(model).split("deployments:\n")[1].split("  - name: b")[0]
    plan_and_apply(lc, only_a)
    assert {d.name for d in lc.ps()} == {"a", "b"}  # without --prune nothing is removed
    pruned, _ = plan_and_apply(lc, only_a, prune=True)
    assert "- deployment b" in pruned and "- key team" in pruned
    assert {d.name for d in lc.ps()} == {"a"} and KeyStore(lc.store).list_keys() == []


def test_a_changed_replica_count_leaves_no_old_member(lc: Lifecycle, model: str) -> None:
    plan_and_apply(lc, file(model, replicas=2))
    assert {d.name for d in lc.ps()} == {"a-1", "a-2", "b"}
    changes, _ = plan_and_apply(lc, file(model))
    assert changes[0].startswith("~ deployment a (") and "replicas: 2 -> 1" in changes[0]
    assert {d.name for d in lc.ps()} == {"a", "b"}


def test_export_round_trips(lc: Lifecycle, model: str) -> None:
    import yaml

    plan_and_apply(lc, file(model, replicas=2, on_demand="true"))
    ks = KeyStore(lc.store)
    text = yaml.safe_dump(export(current(lc, ks)), sort_keys=False)
    assert "sk-llmdock" not in text and "replicas: 2" in text and "idle_stop: 1800s" in text
    assert diff(load(text), current(lc, ks), lc.resolve, prune=True) == []
