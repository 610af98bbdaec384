"""Process facts from ``/proc`` and the few syscalls the local runtime needs. Linux only.

A PID alone does not name a process: after it exits the kernel hands the number out again. So a
deployment records the PID *and* the process start time (``/proc/PID/stat`` field 22, clock ticks
since boot); a process matches only when both do. The parsers are pure and tested table-driven.

Example::

    pid = spawn(["transformers", "serve", ...], env, log_path)
    me = read_stat(pid)               # ProcStat(pid=…, state="S", session=pid, start_ticks=…)
    alive(pid, me.start_ticks)        # True until it exits (a zombie counts as exited)
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str  # R S D T Z X …
    ppid: int
    pgrp: int
    session: int
    start_ticks: int


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/PID/stat`` line. ``comm`` may hold spaces and parentheses, so the fields
    after it are found from the *last* ``)``. Raises ValueError on anything else."""
    head, sep, rest = text.rpartition(")")
    pid_text, open_paren, comm = head.partition(" (")
    fields = rest.split()
    if not sep or not open_paren or len(fields) < 20:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    # fields[0] is field 3 (state); field N is fields[N - 3].
    return ProcStat(
        pid=int(pid_text),
        comm=comm,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        start_ticks=int(fields[19]),
    )


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def is_ours(stat: ProcStat | None, start_ticks: int) -> bool:
    """The process is the one recorded (same start time) and has not exited (zombies have)."""
    return stat is not None and stat.start_ticks == start_ticks and stat.state not in ("Z", "X", "x")


def alive(pid: int, start_ticks: int, proc: Path = PROC) -> bool:
    return is_ours(read_stat(pid, proc), start_ticks)


def session_members(session: int, min_start: int, proc: Path = PROC) -> list[int]:
    """Live processes of session ``session`` started no earlier than ``min_start`` (its leader's
    start): an engine's workers, even after the leader died. Others reusing the number are older."""
    found = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if entry.name.isdigit():
            st = read_stat(int(entry.name), proc)
            if st and st.session == session and st.start_ticks >= min_start and st.state not in ("Z", "X"):
                found.append(st.pid)
    return found


def exit_code(status: int) -> int:
    """A ``waitpid`` status as a shell (and Docker) report it: the code, or 128 + the signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def reap(pid: int) -> int | None:
    """Collect ``pid`` if it is our exited child; its exit code, else None (running, or not ours)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return exit_code(status) if done == pid else None


def spawn(argv: list[str], env: Mapping[str, str], log: Path) -> int:
    """Start ``argv`` detached: its own session (it outlives us, like ``nohup … &``), stdin from
    /dev/null, stdout and stderr appended to ``log``. No shell. Returns the PID.

    ``posix_spawn`` rather than ``subprocess.Popen``: nothing in this process owns the child, so a
    short-lived CLI leaves it to init and a long-lived caller reaps it with :func:`reap`."""
    path = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
    if path is None or not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{argv[0]}: not found on PATH {env.get('PATH', '')!r}")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, fd, 1),
            (os.POSIX_SPAWN_DUP2, fd, 2),
        ]
        return os.posix_spawn(path, argv, dict(env), file_actions=actions, setsid=True)
    finally:
        os.close(fd)


def signal_group(pid: int, start_ticks: int, sig: int, proc: Path = PROC) -> int:
    """Send ``sig`` to the engine's process group when its leader is still ours, else to each
    leftover member of its session. Returns how many targets were signalled."""
    if alive(pid, start_ticks, proc):
        try:
            os.killpg(pid, sig)
            return 1
        except ProcessLookupError:
            return 0
    now = read_stat(pid, proc)
    if now is not None and now.start_ticks != start_ticks and now.state not in ("Z", "X", "x"):
        # The number belongs to another process now (maybe a new session leader, whose session
        # then carries this number too): its members are not ours, so signal nothing.
        return 0
    sent = 0
    for member in session_members(pid, start_ticks, proc):
        try:
            os.kill(member, sig)
            sent += 1
        except ProcessLookupError:
            continue
    return sent


def terminate(pid: int, start_ticks: int, timeout: float, poll: float = 0.05) -> int | None:
    """SIGTERM the group, SIGKILL after ``timeout`` seconds; wait until every member is gone.
    Returns the leader's exit code when we are its parent, else None."""
    code = None

    def gone() -> bool:
        nonlocal code
        code = reap(pid) if code is None else code
        return not alive(pid, start_ticks) and not session_members(pid, start_ticks)

    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if gone():
            break
        signal_group(pid, start_ticks, sig)
        deadline = time.monotonic() + wait_s
        while not gone() and time.monotonic() < deadline:
            time.sleep(poll)
    return code


def rotate(log: Path, keep: int) -> None:
    """``engine.log`` -> ``.1`` -> ``.2`` …, keeping ``keep`` files in all (the live one included)."""
    if not log.exists() or log.stat().st_size == 0:
        return
    for i in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{i}")
        if i == keep - 1:
            older.unlink(missing_ok=True)
        elif older.exists():
            older.replace(log.with_name(f"{log.name}.{i + 1}"))
    if keep > 1:
        log.replace(log.with_name(f"{log.name}.1"))
    else:
        log.unlink()


def cap(log: Path, max_bytes: int, keep: int) -> bool:
    """While the engine runs: when ``log`` passed ``max_bytes``, copy it to ``.1`` (shifting older
    ones) and truncate it in place (the engine appends, so it carries on at the new end).
    ``logrotate``'s copytruncate; lines written during the copy may be lost. True when it rotated."""
    try:
        if log.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(keep - 1, 1, -1):
        older = log.with_name(f"{log.name}.{i - 1}")
        if older.exists():
            older.replace(log.with_name(f"{log.name}.{i}"))
    if keep > 1:
        shutil.copyfile(log, log.with_name(f"{log.name}.1"))
    with log.open("r+b") as f:
        f.truncate(0)
    return True


def tail_lines(path: Path, n: int | None, chunk: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of a text file (all when None), read from the end."""
    try:
        with path.open("rb") as f:
            if n is None:
                data = f.read()
            else:
                f.seek(0, os.SEEK_END)
                end = pos = f.tell()
                data = b""
                while pos > 0 and data.count(b"\n") <= n:
                    pos = max(0, pos - chunk)
                    f.seek(pos)
                    data = f.read(end - pos)
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines if n is None else lines[-n:] if n > 0 else []


def follow_lines(path: Path, running: Iterator[bool], poll: float = 0.2) -> Iterator[str]:
    """New lines appended to ``path`` from its current end, until ``running`` yields False."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        buf = b""
        for still in running:
            data = f.read()
            if not data:
                if path.exists() and path.stat().st_size < f.tell():
                    f.seek(0)  # capped (truncated) under us
                if not still:
                    break
                time.sleep(poll)
                continue
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if buf:
            yield buf.decode("utf-8", "replace")
