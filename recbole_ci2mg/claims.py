r"""Claims of comparison runs, so that processes sharing a results file train each run once.

Before training a run, a comparison process creates its claim,
``<results stem>.claims/<run digest>.claim`` (``os.open`` with ``O_CREAT |
O_EXCL``, while holding :func:`recbole_ci2mg.results.locked`), holding the
process id, the host name, the start time and the run's key; it deletes the
claim once the run's record is appended. While the run trains, a thread
refreshes the claim's modification time every :data:`HEARTBEAT_SECONDS`.

A claim is stale, and another process takes it over, when

- its host is this host and its process no longer exists, or
- its modification time is more than :data:`STALE_SECONDS` old (no
  heartbeat: the process or its machine died, or was stopped that long),
  measured by the file system's clock, not the machines' own clocks.

Host names must then differ between the machines (and containers) that share
a results folder.
"""

import json
import os
import socket
import threading
from datetime import datetime, timezone
from hashlib import sha1
from pathlib import Path

HEARTBEAT_SECONDS = 30
STALE_SECONDS = 600


def claims_folder(results):
    """``runs.jsonl`` -> ``runs.claims/``."""
    results = Path(results)
    return results.with_name(results.stem + ".claims")


def claim_path(results, key):
    """The claim file of the run whose :func:`recbole_ci2mg.results.record_key` is ``key``."""
    return claims_folder(results) / f"{sha1(key.encode()).hexdigest()[:16]}.claim"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _file_system_now(folder):
    """The current time by the clock of the file system that holds ``folder``."""
    clock = folder / "clock"
    clock.touch()
    return clock.stat().st_mtime


def read_claim(path):
    r"""The holder of a claim (``pid``, ``host``, ``started``, ``key``), or None when it is gone.

    A claim whose content cannot be read (its writer died between creating and
    writing it) comes back as ``{}``: it is stale once its heartbeat is.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def stale_reason(path, holder):
    r"""Why the claim at ``path`` held by ``holder`` is stale, or None while its process may still run."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
        return f"process {holder['pid']} on this host has ended"
    try:
        age = _file_system_now(path.parent) - path.stat().st_mtime
    except FileNotFoundError:
        return "it was removed"
    if age > STALE_SECONDS:
        return f"no heartbeat for {age:.0f} s (more than {STALE_SECONDS} s)"
    return None


def describe(holder):
    """``process 123 on HOST since 2024-...``."""
    if not holder:
        return "a process that left no details"
    return f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


class Claim:
    r"""This process's claim of one run; a context manager that refreshes it and deletes it on exit."""

    def __init__(self, path, holder):
        self.path = path
        self.holder = holder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"heartbeat {path.name}", daemon=True)

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if read_claim(self.path) == self.holder:
            self.path.unlink()
        return False


def take_claim(results, key):
    r"""Claim the run ``key`` of ``results`` for this process, taking over a stale claim.

    Call it while holding :func:`recbole_ci2mg.results.locked` for
    ``results``, so that two processes never both take over one stale claim.

    Returns:
        tuple: ``(claim, holder, reason)``: ``claim`` is this process's
        :class:`Claim`, or None when ``holder``, a live process, holds the run;
        with a claim, ``holder`` is the process whose stale claim was taken
        over (None if there was none) and ``reason`` why it was stale.
    """
    path = claim_path(results, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = read_claim(path)
    reason = None
    if holder is not None:
        reason = stale_reason(path, holder)
        if reason is None:
            return None, holder, None
        path.unlink(missing_ok=True)
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key": key,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as stream:
        stream.write(json.dumps(mine))
    return Claim(path, mine), holder, reason
