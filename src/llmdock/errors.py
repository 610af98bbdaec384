"""Every error a user can meet, rooted at one class.

Each error carries a message that says what went wrong and a ``hint`` that says what to do next.
The CLI renders them as one red line plus the hint; the gateway maps them to an OpenAI envelope.

    LlmdockError
    ├── InvalidSpec            a flag, name or value the user gave is wrong
    ├── ConfigError            the config file or an LLMDOCK_* variable is wrong
    ├── NotFound               no deployment / model / image of that name
    │   ├── ImageMissing       the engine image is not on this host
    │   └── EnvMissing         the engine environment (local runtime) does not exist
    ├── Conflict               the request collides with what exists
    │   ├── PortTaken          an explicit port is already listened on or held
    │   ├── GpuUnavailable     GPU index missing, or held by another deployment
    │   └── SpecChanged        same name, different spec (use --replace)
    ├── RuntimeUnavailable     Docker daemon unreachable, no NVIDIA runtime
    ├── EngineFailed           the engine process exited before it became ready
    └── ReadinessTimeout       the engine did not become ready before the deadline
"""

from __future__ import annotations


class LlmdockError(Exception):
    """Base class: ``message`` says what happened, ``hint`` what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidSpec(LlmdockError):
    """A flag, name or value the user gave cannot be used."""


class ConfigError(LlmdockError):
    """The config file or an ``LLMDOCK_*`` variable holds something unusable."""


class NotFound(LlmdockError):
    """No deployment, model or image by that name."""


class ImageMissing(NotFound):
    def __init__(self, image: str) -> None:
        super().__init__(
            f"image {image!r} is not present on this Docker host",
            f"fetch it with `docker pull {image}` (or `docker load -i FILE.tar` on an offline server), "
            "or choose another with --image / `llmdock config set image.ENGINE IMAGE`",
        )
        self.image = image


class EnvMissing(NotFound):
    def __init__(self, env: str, engine: str = "ENGINE") -> None:
        super().__init__(
            f"engine environment {env!r} does not exist",
            f"create it with `llmdock env create {env} --engine {engine}`, "
            "or name an existing one with --env NAME (`llmdock env ls` lists them)",
        )
        self.env = env


class Conflict(LlmdockError):
    """The request collides with something that already exists."""


class PortTaken(Conflict):
    def __init__(self, port: int, holder: str) -> None:
        super().__init__(
            f"port {port} is already in use by {holder}",
            "choose another with --port N, or let llmdock pick one with --port auto",
        )
        self.port = port


class GpuUnavailable(Conflict):
    """A GPU index does not exist, or another deployment holds it."""


class SpecChanged(Conflict):
    """``changed`` lists ``field: old -> new`` for what differs (empty when the old spec is unknown)."""

    def __init__(self, name: str, changed: tuple[str, ...] = ()) -> None:
        what = f" ({'; '.join(changed)})" if changed else ""
        super().__init__(
            f"deployment {name!r} already exists with a different spec{what}",
            f"add --replace to remove it and deploy the new spec, or pick another --name than {name!r}",
        )
        self.changed = changed


class RuntimeUnavailable(LlmdockError):
    """The container runtime (Docker daemon, NVIDIA runtime) cannot be used."""


class EngineFailed(LlmdockError):
    """The engine exited before it became ready; ``log_tail`` holds its last lines."""

    def __init__(self, message: str, hint: str = "", log_tail: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.log_tail = log_tail or []


class ReadinessTimeout(LlmdockError):
    """The engine still runs but did not become ready before the deadline."""


# -- model store (llmdock.models) ------------------------------------------------------------------------
#   LlmdockError ├── HubError           a model hub is unreachable, refuses us, or breaks off a download
#                ├── InsufficientSpace  the models dir has too little free space (need / free in bytes)
#                └── IntegrityError     a file's bytes do not match the hub's checksum or the manifest


class HubError(LlmdockError):
    """A model hub (ModelScope, Hugging Face, a mirror) could not be used; the SDK's words are kept."""


class InsufficientSpace(LlmdockError):
    """Too little free space where the weights go; ``need`` and ``free`` are bytes."""

    def __init__(self, message: str, hint: str = "", need: int = 0, free: int = 0) -> None:
        super().__init__(message, hint)
        self.need = need
        self.free = free


class IntegrityError(LlmdockError):
    """Downloaded or stored bytes do not match the expected checksum; ``files`` names them."""

    def __init__(self, message: str, hint: str = "", files: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.files = files or []


# -- planner (llmdock.planning.fit) ----------------------------------------------------------------------
#   LlmdockError └── DoesNotFit         the model does not fit the GPUs as asked; carries alternatives that do


class DoesNotFit(LlmdockError):
    """The model, context and GPUs asked for do not fit in GPU memory; ``alternatives`` holds the nearest
    requests that do (plain text lines such as ``--max-model-len 32768``), ``hint`` the first of them."""

    def __init__(self, message: str, hint: str = "", alternatives: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.alternatives = alternatives
