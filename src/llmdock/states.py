"""A deployment's states and the events recorded about it: one type each, used by every part.

The runtime (Docker's container state, or a local process) says whether an engine runs; the state
database's events say why it got there (``llmdock stop``, a crash, the gateway's health checks). A
deployment's :class:`State` is derived from both by :func:`derive`, the one place that decides it::

    derive("running", None, Event.READY, Event.UNHEALTHY)   # State.UNHEALTHY
    derive("exited", 0, Event.STOPPED, None)                # State.STOPPED
    derive("exited", 137, Event.READY, None)                # State.FAILED

``pending → pulling → starting → ready ⇄ unhealthy → stopping → stopped``, and ``failed`` from any
(DESIGN.md). ``pulling`` and ``stopping`` are seen only by the command doing them (``up`` prints its
phases; ``stop`` waits), never read back from Docker.
"""

from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    """Its value is what prints, what JSON holds and what the events table stores."""

    def __str__(self) -> str:
        return str(self.value)


class State(_Named):
    PENDING = "pending"
    PULLING = "pulling"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Event(_Named):
    """What the events table records (its ``kind`` column holds the value)."""

    # lifecycle, by llmdock's commands (and the gateway's admin API)
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    READY = "ready"
    FAILED = "failed"
    REPLACED = "replaced"
    ADOPTED = "adopted"
    REMOVED = "removed"
    POLICY = "policy"
    WEIGHTS_COPIED = "weights-copied"  # to the host it runs on (`up --host`)
    # supervision, by `llmdock serve`
    UNHEALTHY = "unhealthy"
    HEALTHY = "healthy"
    CRASHED = "crashed"
    RESTARTED = "restarted"
    RESTART_FAILED = "restart-failed"
    GAVE_UP = "gave-up"
    IDLE_STOPPED = "idle-stopped"
    ON_DEMAND = "on-demand"


# The latest of these says why a deployment is where it is (`ps`: "stopped" vs "exited (1)").
LIFECYCLE = (
    Event.CREATED,
    Event.STARTED,
    Event.STOPPED,
    Event.READY,
    Event.FAILED,
    Event.REPLACED,
    Event.ADOPTED,
)
# The latest of these is the gateway's word on a running deployment's health.
HEALTH = (
    Event.UNHEALTHY,
    Event.HEALTHY,
    Event.CRASHED,
    Event.RESTARTED,
    Event.RESTART_FAILED,
    Event.GAVE_UP,
    Event.READY,
    Event.STARTED,
)
BAD_HEALTH = (Event.UNHEALTHY, Event.RESTART_FAILED, Event.GAVE_UP)
STOPPED_ON_PURPOSE = (Event.STOPPED, Event.IDLE_STOPPED)


def event(kind: str) -> Event | None:
    """The Event a stored ``kind`` names; None for one this version does not know (a newer llmdock's)."""
    try:
        return Event(kind)
    except ValueError:
        return None


def derive(runtime_state: str, exit_code: int | None, lifecycle: Event | None, health: Event | None) -> State:
    """A deployment's state from its runtime's (``running``, ``exited``, ``created``, ``restarting``…),
    the latest lifecycle event and the latest health event recorded about it."""
    if runtime_state == "running":
        if health in BAD_HEALTH:
            return State.UNHEALTHY
        if lifecycle in (Event.READY, Event.ADOPTED) or health in (
            Event.HEALTHY,
            Event.READY,
            Event.RESTARTED,
        ):
            return State.READY
        return State.STARTING
    if runtime_state in ("created", "restarting"):
        return State.STARTING
    if runtime_state == "removing":
        return State.STOPPING
    if runtime_state in ("exited", "dead"):
        if lifecycle in STOPPED_ON_PURPOSE or health == Event.IDLE_STOPPED:
            return State.STOPPED
        return State.FAILED if lifecycle is not None or exit_code else State.STOPPED
    if runtime_state == "paused":
        return State.UNHEALTHY
    return State.PENDING
