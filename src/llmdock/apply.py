"""``llmdock apply -f llmdock.yaml``: deployments, gateway policies and keys declared in one file.

The file is checked whole before anything changes: YAML syntax, the schema (:class:`File`, printed by
``llmdock schema``), every deployment as ``up`` would check its flags, and names given twice; each error
names its line and column. Then :func:`diff` (pure) compares it with what exists and :func:`apply`
carries the changes out: create, change (``up --replace``; the fields that differ are listed) and, with
``prune``, remove what the file no longer names. Applying the same file twice changes nothing.

Secrets never live in the file: a key named there is created and its secret printed once; a key's
scope and limits (models, scopes, and the quotas of :mod:`llmdock.gateway.quotas`: tokens per UTC day
and month, rpm, tpm, max_concurrent) are changed in place, keeping its secret and what it used.

Example file::

    deployments:
      - name: qwen
        model: Qwen/Qwen2.5-7B-Instruct
        max_model_len: 32768
        replicas: 2
        idle_stop: 30m
    keys:
      - name: team
        models: [qwen]
        rpm: 60
        tokens_per_day: 2000000
        max_concurrent: 8
      - name: prom
        scopes: [metrics]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmdock.errors import InvalidSpec, LlmdockError

if TYPE_CHECKING:
    import yaml

    from llmdock.gateway.keystore import KeyStore
    from llmdock.lifecycle import Lifecycle
    from llmdock.spec import DeploymentSpec


class DeploymentEntry(BaseModel):
    """One deployment: every flag of ``llmdock up``, by the same names (underscores)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Deployment name; clients send it as `model`.")
    model: str = Field(description="Weights directory or hub ID ORG/NAME.")
    engine: Literal["vllm", "sglang", "transformers"] = "vllm"
    image: str | None = None
    gpus: str | None = Field(default=None, description="auto | all | none | N | 0,1 (as `up --gpus`).")
    port: int | Literal["auto"] = "auto"
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=1)
    dtype: str | None = None
    kv_cache_dtype: str | None = None
    kv_cache_space: int | None = Field(default=None, ge=1, description="GiB of host RAM (vLLM on the CPU).")
    cpus: str | None = None
    limit_mm_per_prompt: str | dict[str, int] | None = None
    served_model_name: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    network: Literal["host", "bridge"] = "host"
    share_gpus: bool = False
    spread: bool = False
    expose: bool = False
    replicas: int = Field(default=1, ge=1, le=64)
    extra_args: list[str] = Field(default_factory=list, description="Engine flags after `--`.")
    runtime: Literal["docker", "local"] = "docker"
    engine_env: str | None = None
    host: str | None = Field(
        default=None, description="Docker host (`llmdock hosts ls`); default: one with room."
    )
    on_demand: bool = False
    idle_stop: str | None = Field(default=None, description="Stop after this long without requests: 30m, 2h.")


Scope = Literal["api", "metrics"]


def _api_scope() -> list[Scope]:
    return ["api"]


class KeyEntry(BaseModel):
    """A gateway API key by name (its secret is printed once when created, never stored here)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    models: list[str] = Field(default_factory=list, description="Deployments it may use (empty: all).")
    admin: bool = False
    scopes: list[Scope] = Field(
        default_factory=_api_scope, min_length=1, description="api (/v1), metrics (/metrics only)."
    )
    tokens_per_day: int | None = Field(default=None, ge=1, description="Tokens per UTC day.")
    tokens_per_month: int | None = Field(default=None, ge=1, description="Tokens per UTC calendar month.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute (sliding 60 s).")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute (sliding 60 s).")
    max_concurrent: int | None = Field(default=None, ge=1, description="Requests in flight at once.")

    def settings(self) -> dict[str, Any]:
        """Everything but the name, as :func:`current` reads it back."""
        return self.model_dump(exclude={"name"})


class File(BaseModel):
    """An llmdock.yaml file."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    deployments: list[DeploymentEntry] = Field(default_factory=list)
    keys: list[KeyEntry] = Field(default_factory=list)


def schema() -> dict[str, Any]:
    """The JSON Schema of the file (for editors: `# yaml-language-server: $schema=...`)."""
    return File.model_json_schema()


# ---- reading ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Desired:
    specs: dict[str, DeploymentSpec]  # by deployment name
    policies: dict[str, tuple[bool, float | None]]  # name -> (on_demand, idle_stop seconds)
    keys: dict[str, KeyEntry]


def _where(root: yaml.Node | None, loc: tuple[str | int, ...], source: str) -> str:
    """``FILE:LINE:COL`` of the YAML node at ``loc`` (the deepest one that exists)."""
    import yaml

    node, at = root, root  # ``at``: the key of a mapping entry (where the fix goes), else the node
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            key, node = next(((k, v) for k, v in node.value if k.value == part), (node, node))
            at = key
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = at = node.value[part]
        else:
            break
    if at is None:
        return source
    return f"{source}:{at.start_mark.line + 1}:{at.start_mark.column + 1}"


def load(text: str, source: str = "llmdock.yaml") -> Desired:
    """Parse and check the whole file; raise one :class:`InvalidSpec` listing every error with its position."""
    import yaml

    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InvalidSpec(f"{at}: not valid YAML: {why}", "fix the file; nothing was changed") from None
    try:
        parsed = File.model_validate(data)
    except ValidationError as e:
        lines = [
            f"{_where(root, tuple(err['loc']), source)}: {'.'.join(map(str, err['loc'])) or 'the file'}: {err['msg']}"
            for err in e.errors()
        ]
        raise InvalidSpec(
            "; ".join(lines), "fix these entries (`llmdock schema` shows every field); nothing was changed"
        ) from None
    errors: list[str] = []
    specs: dict[str, DeploymentSpec] = {}
    policies: dict[str, tuple[bool, float | None]] = {}
    for i, entry in enumerate(parsed.deployments):
        at = _where(root, ("deployments", i), source)
        if entry.name in specs:
            errors.append(f"{at}: deployment {entry.name!r} is named twice")
            continue
        try:
            specs[entry.name] = to_spec(entry)
            policies[entry.name] = (entry.on_demand, _seconds(entry.idle_stop))
        except LlmdockError as err:
            errors.append(
                f"{at}: {entry.name}: {err.message} ({err.hint})" if err.hint else f"{at}: {err.message}"
            )
    keys: dict[str, KeyEntry] = {}
    for i, key in enumerate(parsed.keys):
        if key.name in keys:
            errors.append(f"{_where(root, ('keys', i), source)}: key {key.name!r} is named twice")
        keys[key.name] = key
    if errors:
        raise InvalidSpec("; ".join(errors), "fix these entries; nothing was changed")
    return Desired(specs, policies, keys)


def _seconds(text: str | None) -> float | None:
    from llmdock.gateway.keystore import parse_duration

    return parse_duration(text) if text else None


def to_spec(entry: DeploymentEntry) -> DeploymentSpec:
    """The spec ``llmdock up`` would build from the same flags (validated the same way)."""
    from llmdock.spec import DeploymentSpec
    from llmdock.weights import canonical_model

    limits = entry.limit_mm_per_prompt
    return DeploymentSpec.create(
        canonical_model(entry.model),
        name=entry.name,
        engine=entry.engine,
        image=entry.image,
        gpus=entry.gpus,
        port=entry.port,
        tensor_parallel_size=entry.tensor_parallel_size,
        gpu_memory_utilization=entry.gpu_memory_utilization,
        max_model_len=entry.max_model_len,
        dtype=entry.dtype,
        kv_cache_dtype=entry.kv_cache_dtype,
        kv_cache_space=entry.kv_cache_space,
        cpus=entry.cpus,
        limit_mm_per_prompt=limits if isinstance(limits, str) or limits is None else _json(limits),
        served_model_name=entry.served_model_name,
        env=[f"{k}={v}" for k, v in entry.env.items()],
        network=entry.network,
        share_gpus=entry.share_gpus,
        placement="spread" if entry.spread else "binpack",
        expose=entry.expose,
        replicas=entry.replicas,
        extra_args=entry.extra_args,
        runtime=entry.runtime,
        engine_env=entry.engine_env,
        host=entry.host,
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# ---- comparing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    kind: Literal["deployment", "policy", "key"]
    action: Literal["create", "change", "remove"]
    name: str
    fields: tuple[str, ...] = ()  # what differs, ``field: old -> new``

    def __str__(self) -> str:
        sign = {"create": "+", "change": "~", "remove": "-"}[self.action]
        what = f" ({'; '.join(self.fields)})" if self.fields else ""
        return f"{sign} {self.kind} {self.name}{what}"


@dataclass(frozen=True)
class Current:
    """What exists: each deployment's resolved spec (labels), policies, active keys."""

    specs: dict[str, dict[str, Any]]  # name -> spec dict as recorded (first replica's, group name)
    hashes: dict[str, str]
    policies: dict[str, tuple[bool, float | None]]
    keys: dict[str, dict[str, Any]]  # name -> KeyEntry.settings()
    notes: list[str] = field(default_factory=list)


def diff(desired: Desired, current: Current, resolve: Any, *, prune: bool) -> list[Change]:
    """The changes that make ``current`` what ``desired`` says. Pure. ``resolve`` fills a spec's image or
    engine environment as ``up`` would (so a default image is no change)."""
    from llmdock.lifecycle import spec_diff

    out: list[Change] = []
    for name, spec in desired.specs.items():
        resolved = resolve(spec)
        first = resolved.replica_specs()[0]
        if name not in current.hashes:
            out.append(Change("deployment", "create", name))
        elif current.hashes[name] != first.hash():
            out.append(Change("deployment", "change", name, spec_diff(current.specs[name], _group(first))))
    if prune:
        out += [Change("deployment", "remove", n) for n in sorted(current.hashes) if n not in desired.specs]
    for name, policy in desired.policies.items():
        have_policy = current.policies.get(name, (False, None))
        if have_policy != policy:
            labels = ("on_demand", "idle_stop_s")
            changed = [
                f"{n}: {h!r} -> {w!r}" for n, h, w in zip(labels, have_policy, policy, strict=True) if h != w
            ]
            out.append(Change("policy", "change", name, tuple(changed)))
    for name, key in desired.keys.items():
        want = key.settings()
        have = current.keys.get(name)
        if have is None:
            out.append(Change("key", "create", name))
        elif have != want:
            changed = [f"{n}: {have.get(n)!r} -> {w!r}" for n, w in want.items() if have.get(n) != w]
            out.append(Change("key", "change", name, tuple(changed)))
    if prune:
        out += [Change("key", "remove", n) for n in sorted(current.keys) if n not in desired.keys]
    return out


def _group(first: DeploymentSpec) -> dict[str, Any]:
    """A replica's public spec, named as its group (what the file names)."""
    data = first.public_dict()
    data["name"] = first.group or first.name
    return data


# ---- reading what exists, carrying changes out --------------------------------------------------------
def current(lc: Lifecycle, keystore: KeyStore) -> Current:
    """Deployments (by group: a deployment with replicas is one entry), policies and active keys."""
    specs: dict[str, dict[str, Any]] = {}
    hashes: dict[str, str] = {}
    for d in sorted(lc.ps(), key=lambda d: d.name):
        name = d.group or d.name
        if name not in hashes:  # the first replica stands for its group
            hashes[name], specs[name] = d.spec_hash, {**d.spec, "name": name}
    policies = {n: (p.on_demand, p.idle_stop_s) for n, p in keystore.policies().items()}
    keys = {k.name: _key_settings(k) for k in keystore.list_keys()}
    return Current(specs, hashes, policies, keys, list(lc.notes))


def _key_settings(k: Any) -> dict[str, Any]:
    """A stored key (:class:`~llmdock.gateway.keystore.KeyInfo`) as the file would write it."""
    return KeyEntry(
        name=k.name, models=list(k.models), admin=k.admin, scopes=list(k.scopes), **k.quota.as_dict()
    ).settings()


def _key_args(key: KeyEntry) -> dict[str, Any]:
    from llmdock.gateway.quotas import Quota

    quota = Quota(**{n: getattr(key, n) for n in Quota.names()})
    return {"models": tuple(key.models), "quota": quota, "admin": key.admin, "scopes": tuple(key.scopes)}


def carry_out(
    changes: list[Change],
    desired: Desired,
    lc: Lifecycle,
    keystore: KeyStore,
    *,
    wait: bool,
    timeout: float,
    say: Any = print,
) -> dict[str, str]:
    """Apply ``changes`` in order: removals first (they free GPUs and ports), then the rest.
    Returns the secrets of keys created (name -> key), to be shown once."""
    from llmdock.gateway.keystore import update_key
    from llmdock.gateway.routing import Policy

    secrets: dict[str, str] = {}
    for c in sorted(changes, key=lambda c: c.action != "remove"):
        say(str(c))
        if c.kind == "deployment" and c.action == "remove":
            lc.rm(c.name, force=True)
        elif c.kind == "deployment":
            spec = desired.specs[c.name]
            if c.action == "change":  # a changed replica count leaves old members behind: remove them
                keep = {r.name for r in spec.replica_specs()}
                for member in lc.names(c.name):
                    if member not in keep:
                        lc.rm(member, force=True)
            lc.up(spec, replace=c.action == "change", wait=wait, timeout=timeout)
        elif c.kind == "policy":
            on_demand, idle = desired.policies[c.name]
            keystore.set_policy(c.name, Policy(on_demand, idle))
        elif c.action == "create":
            secrets[c.name] = keystore.create(c.name, **_key_args(desired.keys[c.name]))
        elif c.action == "change":
            update_key(keystore, c.name, **_key_args(desired.keys[c.name]))
        else:
            keystore.revoke(c.name)
    return secrets


def export(cur: Current) -> dict[str, Any]:
    """Today's state as an llmdock.yaml document (no secrets: keys by name, scope and limits)."""
    defaults = DeploymentEntry(name="-", model="-").model_dump()
    deployments = []
    for name, spec in sorted(cur.specs.items()):
        entry: dict[str, Any] = {"name": name, "model": spec.get("model", "")}
        for key, value in spec.items():
            target = {"placement": "spread"}.get(key, key)
            if target == "spread":
                value = value == "spread"
            if key == "port" and value is None:
                value = "auto"
            if target in defaults and target not in ("name", "model") and value != defaults[target]:
                entry[target] = value
        on_demand, idle = cur.policies.get(name, (False, None))
        if on_demand:
            entry["on_demand"] = True
        if idle:
            entry["idle_stop"] = f"{int(idle)}s"
        deployments.append(entry)
    key_defaults = KeyEntry(name="-").settings()
    keys = [
        {"name": n, **{f: v for f, v in settings.items() if v != key_defaults[f]}}
        for n, settings in sorted(cur.keys.items())
    ]
    return {"version": 1, "deployments": deployments, "keys": keys}
