"""The run lock of a scoring output: a lease, so that one run writes at a time.

``PRED.zarr/.lock`` names its owner and when it last renewed its lease::

    {"token": "<32 hex: this run>", "host": "...", "machine": "<boot id>/<pid namespace>",
     "pid": 1234, "pid_start": 1796536220.34, "started": "<ISO>", "renewed": "<ISO>",
     "ttl": 120.0}

A run takes the lock with an exclusive create (a conditional write on
object storage) and renews it every ``ttl / 4`` seconds from a thread. A
lock is taken over, with a warning naming the old owner and the age of
its last renewal:

- at once, when its owner ran on this machine (same boot and pid
  namespace) and its process is gone: no process with that pid, or one
  that started at another time (pids are reused: a container's
  entrypoint is pid 1 in every run);
- from anywhere, when its lease has not been renewed for ``ttl`` seconds
  (by the lock's own ``renewed`` timestamp): a run on another node, a
  container that was killed, a run paused too long.

A live lease is refused with its owner, host and the age of its last
renewal; ``break_lock`` forces. Two runs that both find a lock stale race
for a claim file named after the stale owner's token (an exclusive
create): only the winner replaces the lock.

A run that lost its lease (it was paused past ``ttl`` and another run took
over) notices at its next renewal, and every chunk checks the lock before
it commits (:func:`check_owner`): it stops without committing anything more.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import storage
from ..errors import LeaseLostError, OutputLockedError, ScoreError

log = logging.getLogger(__name__)

LOCK = ".lock"
CLAIM = ".lock.claim-"  # + the stale owner's token
DEFAULT_TTL = 120.0
MIN_TTL = 1.0


def check_ttl(ttl) -> float:
    """``ttl`` as seconds, or a ScoreError naming it."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl == ttl \
            or ttl < MIN_TTL or ttl == float("inf"):
        raise ScoreError(f"lock_ttl must be a number of seconds >= {MIN_TTL:g}, got {ttl!r}")
    return float(ttl)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _iso(t: _dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def current_machine() -> str:
    """This boot of this machine and this pid namespace: where a pid means one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: the host name stands for the machine
        return socket.gethostname()
    return f"{boot}/{ns}"


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (None: no such process)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # dead, not reaped yet
            return None
        return proc.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # exists, but not ours to inspect: alive
        return -1.0


def _age(owner: dict) -> float | None:
    """Seconds since ``owner`` last renewed its lease (by its own timestamp)."""
    try:
        renewed = _dt.datetime.fromisoformat(owner["renewed"])
    except (KeyError, TypeError, ValueError):
        return None
    return (_now() - renewed).total_seconds()


def _read(lock: Path) -> dict | None:
    """The lock's owner; None if there is no lock; {} if it is unreadable."""
    import time

    for attempt in range(3):  # (an object store may expire a read the owner's renewal overtook)
        try:
            text = lock.read_text()
            break
        except FileNotFoundError:
            return None
        except OSError:
            time.sleep(0.05 * (attempt + 1))
    else:
        return {}
    try:
        owner = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    age = _age(owner)
    renewed = f"last renewed {age:.0f} s ago" if age is not None else "never renewed"
    return (f"run {str(owner.get('token', '?'))[:8]} (pid {owner.get('pid')} on "
            f"{owner.get('host')}, since {owner.get('started')}, {renewed})")


def _gone(owner: dict, machine: str) -> bool:
    """Whether ``owner`` ran on this machine and its process is gone."""
    if owner.get("machine") != machine or not isinstance(owner.get("pid"), int):
        return False
    started = _start_time(owner["pid"])
    if started is None:
        return True
    want = owner.get("pid_start")
    return isinstance(want, (int, float)) and started >= 0 and abs(started - want) > 1.0


@dataclass
class Lease:
    """The lock this run holds; :meth:`check` raises once it was lost."""

    path: Path
    owner: dict
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def token(self) -> str:
        return self.owner["token"]

    def check(self, *, now: bool = False) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost (``now``: look at the lock
        itself, not only at what the last renewal saw)."""
        if now and self.lost is None:
            self._lost_to(_read(self.path))
        if self.lost is not None:
            raise LeaseLostError(self.lost)

    def _lost_to(self, have: dict | None) -> bool:
        if have and have.get("token") == self.token:
            return False
        self.lost = (f"{self.path.parent} was taken over by "
                     f"{_describe(have) if have else 'nobody (the lock is gone)'}: this run "
                     f"lost its lease (paused or cut off past lock_ttl={self.owner['ttl']:g} s, "
                     f"or broken with --break-lock) and stops without committing more")
        return True

    def renew(self) -> None:
        """Renew the lease, or record that another run holds it now."""
        if self._lost_to(_read(self.path)):
            log.error("%s", self.lost)
            return
        self.owner["renewed"] = _iso(_now())
        storage.write_atomic(self.path, json.dumps(self.owner))


def check_owner(out_path: str, token: str | None) -> None:
    """Raise :class:`LeaseLostError` unless the run ``token`` still holds ``out_path``'s lock.

    Called by every chunk before its commit record: a run that lost its
    lease commits nothing more. ``token`` None: no lease to check.
    """
    if token is None:
        return
    have = _read(storage.to_path(out_path) / LOCK)
    if have == {}:  # unreadable right now: not proof of a loss (the renewal catches one)
        return
    if not have or have.get("token") != token:
        raise LeaseLostError(
            f"{out_path} is no longer locked by run {token[:8]} (now: "
            f"{_describe(have) if have else 'no lock'}): the chunk is not committed")


def _judge(owner: dict, me: dict, ttl: float, *, wait: bool) -> str | None:
    """Why ``owner``'s lock may be taken over, or None when its lease is live.

    An owner on another machine whose lease is not expired yet is watched
    (``wait``) until it renews (live) or its lease runs out (stale), at most
    ``ttl`` seconds: a rerun right after a kill on another node goes on by
    itself instead of failing.
    """
    if not owner:  # damaged (our writes are atomic): judged as a lock never renewed
        owner = {"renewed": _iso(_now()), "ttl": ttl}
    if _gone(owner, me["machine"]):
        return "its process is gone"
    limit = float(owner.get("ttl") or ttl)
    age = _age(owner)
    if age is not None and age > limit:
        return "its lease expired"
    if not wait or owner.get("machine") == me["machine"] or age is None:
        return None
    import time

    seen = _read(me["_lock"])
    deadline = time.monotonic() + (limit - age) + 0.5
    while time.monotonic() < deadline:
        time.sleep(min(max(limit / 16, 0.05), 2.0, max(deadline - time.monotonic(), 0.0)))
        if _read(me["_lock"]) != seen:
            return None  # renewed, released or replaced: not ours to take
    log.info("the lease of %s ran out while waiting", _describe(owner))
    return "its lease expired"


def _take(out: Path, lock: Path, me: dict, *, ttl: float, break_lock: bool,
          wait: bool) -> None:
    """Create the lock for ``me``, taking over a stale one (see the module docstring)."""
    for _ in range(5):
        try:
            storage.create_exclusive(lock, json.dumps({k: v for k, v in me.items()
                                                       if not k.startswith("_")}))
            return
        except FileExistsError:
            pass
        owner = _read(lock)
        if owner is None:
            continue  # released meanwhile
        why = _judge(owner, me, ttl, wait=wait and not break_lock)
        if why is None:
            now = _read(lock)
            if now is None or (now or {}).get("token") != owner.get("token"):
                continue  # released or replaced while we watched: look again
            owner = now  # the same owner, alive or renewing
        if why is None and not break_lock:
            raise OutputLockedError(
                f"{out} is being written by another {_describe(owner)}: wait for it to "
                f"finish, or for its lease to expire "
                f"({float(owner.get('ttl') or ttl):g} s without renewal) if it died; "
                f"--break-lock forces")
        claim = out / f"{CLAIM}{str(owner.get('token', 'unreadable'))[:32]}"
        try:
            storage.create_exclusive(claim, me["token"])
        except FileExistsError:
            raise OutputLockedError(
                f"{out}: another run is taking over the stale lock of {_describe(owner)} "
                f"right now: try again later") from None
        try:
            now = _read(lock)
            # (stale: not renewed since we judged it; forced: still that owner's)
            if now == owner or (why is None and (now or {}).get("token") == owner.get("token")):
                log.warning("taking over the lock of %s from %s: %s", out, _describe(owner),
                            why or "--break-lock")
                lock.unlink(missing_ok=True)
        finally:
            with contextlib.suppress(OSError):
                claim.unlink(missing_ok=True)
    raise OutputLockedError(f"{out}: could not take its lock (other runs keep taking it)")


@contextlib.contextmanager
def run_lock(out: Path, *, break_lock: bool = False, ttl: float = DEFAULT_TTL,
             wait: bool = True) -> Iterator[Lease]:
    """Hold ``out``'s lease for the duration of a run (see the module docstring).

    Yields the :class:`Lease`; its renewal thread runs until the block ends.
    ``wait``: watch a lock from another machine until it is renewed (refused)
    or its lease runs out (taken over), instead of refusing it at once.
    """
    ttl = check_ttl(ttl)
    out = storage.to_path(out)
    storage.mkdir(out)
    lock = out / LOCK
    now = _iso(_now())
    me = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "machine": current_machine(),
          "pid": os.getpid(), "pid_start": _start_time(os.getpid()), "started": now,
          "renewed": now, "ttl": ttl}
    _take(out, lock, {**me, "_lock": lock}, ttl=ttl, break_lock=break_lock, wait=wait)
    lease = Lease(lock, me)

    def renewing() -> None:
        while not lease._stop.wait(ttl / 4):
            try:
                lease.renew()
            except OSError as exc:  # a storage hiccup: the next renewal may work
                log.warning("could not renew the lock of %s: %s", out, exc)
            if lease.lost is not None:
                return

    thread = threading.Thread(target=renewing, name="digitbatch-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        lease._stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(OSError):
            if (_read(lock) or {}).get("token") == me["token"]:
                lock.unlink()
