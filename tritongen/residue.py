"""What a killed run leaves behind, and how the next run removes it.

A run killed by SIGKILL (the OOM killer, a CI timeout, ``kill -9``) cannot clean up, so every
directory it makes for itself is named for its owner, ``<host>-<boot>-<pid>-<start>-``: this
machine's hostname and boot (8 hex digits of each), the process id and the process's start time
(so a reused pid is not taken for the owner). The next run to make such a directory removes the
ones whose owner is gone (:func:`remove_stale`). Directories another machine made (a repository on
a shared filesystem) are left alone; unnamed ones of older tritongen versions once they are old.

Child processes die with their parent, even a SIGKILLed one (:func:`die_with_parent`), and a
failed child's output is reduced to the line that says what went wrong (:func:`last_error_line`).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

_OWNER_RE = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Owner:
    host: str  # 8 hex digits of sha1(hostname)
    boot: str  # 8 hex digits of the kernel's boot id ("00000000" without /proc)
    pid: int
    start: int  # the process's start time in clock ticks since boot (0 without /proc)

    @property
    def tag(self) -> str:
        return f"{self.host}-{self.boot}-{self.pid}-{self.start}-"

    @classmethod
    def of(cls, name: str, prefix: str) -> "Owner | None":
        """The owner a directory name ``prefix<tag>...`` carries; None for another name."""
        match = _OWNER_RE.match(name[len(prefix):]) if name.startswith(prefix) else None
        return cls(match["host"], match["boot"], int(match["pid"]), int(match["start"])) if match else None

    def alive(self) -> bool:
        """False only when the owner is surely gone: this machine rebooted since, or its process no
        longer runs (or is a zombie, or the pid now belongs to a process started later). Another
        machine's owner counts as alive: its processes cannot be seen from here."""
        me = current_owner()
        if self.host != me.host:
            return True
        if self.boot != me.boot:
            return False
        if self.pid == me.pid:
            return self.start == me.start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            pass
        stat = _proc_stat(self.pid)
        if stat is None:  # no /proc: the pid exists, that is all we know
            return True
        state, start = stat
        return state not in ("Z", "X") and start == self.start


def current_owner() -> Owner:
    pid = os.getpid()
    stat = _proc_stat(pid)
    return Owner(_host(), _boot(), pid, stat[1] if stat else 0)


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8].lower()
    except OSError:
        return "0" * 8


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) from /proc/PID/stat; None without it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": field 3 (state) onwards
    try:
        return fields[0], int(fields[19])  # field 22: starttime
    except (IndexError, ValueError):
        return None


def owned_dir(parent: Path, prefix: str) -> Path:
    """A new directory ``parent/<prefix><owner tag><random>`` owned by this process."""
    return Path(tempfile.mkdtemp(prefix=prefix + current_owner().tag, dir=parent))


def is_stale(path: Path, prefix: str, unnamed_age: float) -> bool:
    """Whether ``path`` (named ``prefix...``) was left by a run that is gone: its owner is dead, or,
    named without an owner (older tritongen versions), it has not changed for ``unnamed_age`` seconds."""
    owner = Owner.of(path.name, prefix)
    if owner is not None:
        return not owner.alive()
    try:
        return time.time() - path.lstat().st_mtime > unnamed_age
    except OSError:
        return False


def remove_stale(parent: Path, prefix: str, unnamed_age: float,
                 remove: Callable[[Path], None] = lambda path: shutil.rmtree(path, ignore_errors=True)) -> list[Path]:
    """Remove (with ``remove``) the entries ``parent/prefix*`` that :func:`is_stale`; the ones removed.
    A directory that cannot be listed or removed (another user's) is left as it is."""
    try:
        found = [p for p in Path(parent).iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    stale = [p for p in found if is_stale(p, prefix, unnamed_age)]
    for path in stale:
        with contextlib.suppress(OSError):
            remove(path)
    return stale


TEMP_UNNAMED_AGE = 24 * 3600  # an unnamed temporary directory this old belongs to no running build (QAT runs take hours)


@contextlib.contextmanager
def owned_temp_dir(prefix: str) -> Iterator[Path]:
    """A directory in the system's temporary directory named for this process and removed when the
    block ends (an exception, SIGTERM through the CLI's handler); the ones of dead processes with
    this prefix are removed first, which is what clears up after a SIGKILL."""
    parent = Path(tempfile.gettempdir())
    remove_stale(parent, prefix, TEMP_UNNAMED_AGE)
    path = owned_dir(parent, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------ child processes


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :mod:`subprocess` that has the kernel SIGKILL the child when this process
    dies, however it dies (Linux ``PR_SET_PDEATHSIG``); None where that does not exist.

    The signal follows the *thread* that starts the child: start children from a thread that
    outlives them (``subprocess.run`` waits, so any thread does)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, kill = os.getpid(), int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, kill)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os._exit(1)

    return preexec


# "IndexError: ...", "paddle.base.core.InvalidArgumentError: ...", "Error: ...", "[ERROR] ...", C++ aborts
_ERROR_LINE = re.compile(r"^(?:(?:[A-Za-z_][\w.]*)?(?:Error|Exception)(?::|$)|\[(?:ERROR|FATAL)\]|terminate called"
                         r"|Segmentation fault|Aborted)")
_TRACEBACK_LINE = re.compile(r"^(?:Traceback \(most recent call last\)|File \"|[\^~ ]+$|During handling of|"
                             r"The above exception was)")


def last_error_line(output: str, limit: int = 500) -> str:
    """The line of a failed child's output that says what went wrong: the last exception or error
    line (the end of a traceback), else the last line that is not part of a traceback."""
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    plain = [line for line in lines if not _TRACEBACK_LINE.match(line)]
    line = (errors or plain or ["no output"])[-1]
    return line if len(line) <= limit else line[:limit] + "..."


def describe_exit(returncode: int) -> str:
    """``exit 1``, or ``killed by SIGSEGV`` for a child a signal ended."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"
