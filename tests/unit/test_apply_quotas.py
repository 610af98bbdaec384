"""`llmdock apply` with key quotas and scopes: refused entries with positions, diffs, idempotence,
changes in place (the same secret), export round trip. Real SQLite, the in-memory runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmdock import settings
from llmdock.apply import carry_out, current, diff, export, load, schema
from llmdock.errors import InvalidSpec
from llmdock.gateway.keystore import KeyStore
from llmdock.gateway.quotas import Quota
from llmdock.lifecycle import Lifecycle
from tests.support.memruntime import memory_lifecycle

IMAGE = settings.KEYS["image.transformers"].default


@pytest.fixture
def lc(tmp_path: Path) -> Lifecycle:
    return memory_lifecycle(tmp_path / "home", IMAGE)


def apply_text(lc: Lifecycle, text: str, prune: bool = False) -> list[str]:
    ks = KeyStore(lc.store)
    desired = load(text)
    changes = diff(desired, current(lc, ks), lc.resolve, prune=prune)
    carry_out(changes, desired, lc, ks, wait=False, timeout=5, say=lambda _: None)
    return [str(c) for c in changes]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "keys:\n  - {name: k, tokens_per_day: 0}\n",
            ["llmdock.yaml:2:15", "tokens_per_day", "greater than"],
        ),
        ("keys:\n  - name: k\n    tpm: lots\n", ["llmdock.yaml:3:5", "keys.0.tpm"]),
        ("keys:\n  - name: k\n    max_concurrent: -1\n", ["llmdock.yaml:3:5", "max_concurrent"]),
        ("keys:\n  - name: k\n    scopes: [logs]\n", ["llmdock.yaml:3:14", "'api' or 'metrics'"]),
        ("keys:\n  - name: k\n    scopes: []\n", ["llmdock.yaml:3:5", "scopes"]),
        ("keys:\n  - name: k\n    tokens_per_week: 5\n", ["llmdock.yaml:3:5", "Extra inputs"]),
    ],
)
def test_a_bad_quota_is_refused_with_its_position(text: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidSpec) as e:
        load(text)
    for fragment in fragments:
        assert fragment in e.value.message, e.value.message


BASE = "keys:\n  - name: team\n    models: [a]\n    rpm: 60\n    tokens_per_day: 1000\n  - name: prom\n    scopes: [metrics]\n"


@pytest.mark.parametrize(
    ("edit", "change"),
    [
        (("rpm: 60", "rpm: 90"), "~ key team (rpm: 60 -> 90)"),
        (("    tokens_per_day: 1000\n", ""), "~ key team (tokens_per_day: 1000 -> None)"),
        (("rpm: 60", "rpm: 60\n    tpm: 5000"), "~ key team (tpm: None -> 5000)"),
        (
            ("rpm: 60", "tokens_per_month: 9\n    max_concurrent: 4"),
            "~ key team (tokens_per_month: None -> 9; rpm: 60 -> None; max_concurrent: None -> 4)",
        ),
        (("[metrics]", "[api, metrics]"), "~ key prom (scopes: ['metrics'] -> ['api', 'metrics'])"),
        (("rpm: 60", "rpm: 60"), None),
    ],
)
def test_quota_changes_are_shown_then_made_in_place(
    lc: Lifecycle, edit: tuple[str, str], change: str | None
) -> None:
    assert apply_text(lc, BASE) == ["+ key team", "+ key prom"]
    ks = KeyStore(lc.store)
    hashes = {r.name: r.hash for r in ks.active()}
    assert apply_text(lc, BASE) == []  # idempotent
    text = BASE.replace(*edit)
    changes = apply_text(lc, text)
    if change is None:
        assert changes == []
        return
    assert len(changes) == 1 and changes[0].startswith(change), changes
    assert apply_text(lc, text) == []  # and again nothing
    assert {r.name: r.hash for r in ks.active()} == hashes  # the same secrets
    want = {k.name: k for k in load(text).keys.values()}
    for k in ks.list_keys():
        assert k.quota == Quota(**{n: getattr(want[k.name], n) for n in Quota.names()})
        assert list(k.scopes) == want[k.name].scopes


def test_export_writes_quotas_and_scopes_and_round_trips(lc: Lifecycle) -> None:
    text = BASE.replace(
        "rpm: 60", "rpm: 60\n    tpm: 5000\n    tokens_per_month: 30000\n    max_concurrent: 4"
    )
    apply_text(lc, text)
    ks = KeyStore(lc.store)
    exported = export(current(lc, ks))
    assert exported["keys"] == [
        {"name": "prom", "scopes": ["metrics"]},
        {
            "name": "team",
            "models": ["a"],
            "tokens_per_day": 1000,
            "tokens_per_month": 30000,
            "rpm": 60,
            "tpm": 5000,
            "max_concurrent": 4,
        },
    ]
    again = load(yaml.safe_dump(exported, sort_keys=False))
    assert diff(again, current(lc, ks), lc.resolve, prune=True) == []


def test_the_schema_names_every_quota() -> None:
    key = schema()["$defs"]["KeyEntry"]["properties"]
    for name in (*Quota.names(), "scopes"):
        assert name in key and key[name].get("description"), name
