"""A deployment's state, derived in one place from the runtime's state and the recorded events."""

from __future__ import annotations

import pytest

from llmdock.states import HEALTH, LIFECYCLE, Event, State, derive, event

E = Event


@pytest.mark.parametrize(
    ("runtime", "code", "lifecycle", "health", "want"),
    [
        ("running", None, E.CREATED, None, State.STARTING),  # up has not seen it ready yet
        ("running", None, E.READY, None, State.READY),
        ("running", None, E.ADOPTED, None, State.READY),
        ("running", None, E.STARTED, E.HEALTHY, State.READY),  # started by the gateway, then healthy
        ("running", None, E.READY, E.UNHEALTHY, State.UNHEALTHY),
        ("running", None, E.READY, E.RESTART_FAILED, State.UNHEALTHY),
        ("running", None, E.READY, E.GAVE_UP, State.UNHEALTHY),
        ("running", None, None, None, State.STARTING),  # no database: nothing says it is ready
        ("created", None, E.CREATED, None, State.STARTING),
        ("restarting", 1, E.READY, E.CRASHED, State.STARTING),
        ("removing", 0, E.STOPPED, None, State.STOPPING),
        ("exited", 0, E.STOPPED, None, State.STOPPED),
        ("exited", 137, E.STOPPED, None, State.STOPPED),  # `stop` killed it after the grace period
        ("exited", 0, E.READY, E.IDLE_STOPPED, State.STOPPED),
        ("exited", 1, E.READY, None, State.FAILED),  # died on its own
        ("exited", 0, E.READY, None, State.FAILED),  # gone without a stop is not "stopped"
        ("exited", 0, None, None, State.STOPPED),  # no history, clean exit
        ("exited", 3, None, None, State.FAILED),
        ("dead", 1, E.READY, None, State.FAILED),
        ("paused", None, E.READY, None, State.UNHEALTHY),
        ("unknown", None, None, None, State.PENDING),
    ],
)
def test_derive(
    runtime: str, code: int | None, lifecycle: Event | None, health: Event | None, want: State
) -> None:
    assert derive(runtime, code, lifecycle, health) is want


def test_values_are_what_the_events_table_and_json_hold() -> None:
    assert [e.value for e in Event] == [str(e) for e in Event]
    assert len({e.value for e in Event}) == len(Event)
    assert event("restart-failed") is E.RESTART_FAILED
    assert event("from-a-newer-llmdock") is None
    assert set(LIFECYCLE) <= set(Event) and set(HEALTH) <= set(Event)
    assert f"{State.READY}" == "ready" and State("unhealthy") is State.UNHEALTHY
