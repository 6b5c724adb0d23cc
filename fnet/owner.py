"""A job folder's owner: the process that writes a job folder holds a lock in it, and a job process dies with the
runner that started it.

Why: ``python -m fnet.study`` runs its jobs as child processes. A runner killed with SIGKILL cannot stop them, and a
rerun started at once would start a second process on the same jobs, both writing into the same folders. So:

1. whoever writes a job folder holds ``<folder>/job.lock`` (:func:`own`: ``fcntl.flock``, which the OS releases
   when the process dies, however it dies) and writes ``owner.json`` (pid, host, since) beside it; a runner waits
   for the lock before it sets an interrupted folder aside, so it never touches a folder a live process writes;
2. a job process started by a runner (the runner puts its pid in ``$FNET_RUNNER_PID``) asks the kernel to kill it
   when the runner dies (:func:`die_with_runner`: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, through ctypes)
   and, where there is no such call, polls ``os.getppid()`` from a thread. Job processes also stay in the
   runner's process group, so ``kill -- -PGID`` or Ctrl-C in a terminal reaches all of them.

``python -m fnet.owner FOLDER -- COMMAND ...`` takes the folder's lock and the death signal, then becomes COMMAND
(``os.execvp``): the lock's descriptor and the death signal pass to it, so the job process itself owns its folder
(the study runner starts ``train.py``, ``analyze.py`` and its other single jobs this way;
``fnet.pipelines.evaluate_batch`` owns each of its jobs' folders in turn). A polling thread does not survive
``exec``, so off Linux such a single job may run on after its runner's death; its lock still keeps a rerun out of
its folder until it ends. Sits at the bottom of fnet's layers: it imports nothing of fnet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: filelock's lock, without passing it on through exec
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "OWNER_LOCK",
    "OWNER_FILE",
    "RUNNER_ENV",
    "FolderOwned",
    "Owner",
    "own",
    "owner_of",
    "die_with_runner",
    "main",
]

OWNER_LOCK = "job.lock"
OWNER_FILE = "owner.json"
#: set by the study runner for its job processes: the runner's pid
RUNNER_ENV = "FNET_RUNNER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class FolderOwned(RuntimeError):
    """The job folder is owned by another live process (the message names it)."""


def owner_of(folder: str | os.PathLike) -> dict:
    """What ``<folder>/owner.json`` says about the folder's last owner (pid, host, since), or ``{}``."""
    try:
        return json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _owner_text(folder: Path) -> str:
    info = owner_of(folder)
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')})"


class Owner:
    """A held job-folder lock (:func:`own`); :meth:`release` (or leaving the ``with`` block) lets it go."""

    def __init__(self, folder: Path, handle: object, fd: int | None):
        self.folder, self._handle, self.fd = folder, handle, fd

    def release(self) -> None:
        """Let the lock go (the OS does it too when the process ends)."""
        if self._handle is None:
            return
        if self.fd is not None:
            os.close(self.fd)
        else:  # pragma: no cover - filelock fallback
            self._handle.release()  # type: ignore[attr-defined]
        self._handle, self.fd = None, None

    def __enter__(self) -> "Owner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(path: Path) -> tuple[object, int | None] | None:
    if fcntl is None:  # pragma: no cover
        from filelock import FileLock, Timeout

        handle = FileLock(str(path), timeout=0)
        try:
            handle.acquire()
        except Timeout:
            return None
        return handle, None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd, fd


def own(folder: str | os.PathLike, *, wait: float = 0.0, poll: float = 0.2, log=None, record: bool = True) -> Owner:
    """Take ``<folder>/job.lock`` (the folder is created) and write ``owner.json``; returns the held lock.

    Parameters
    ----------
    folder : path
        The job folder.
    wait : float
        Seconds to wait for a live owner to let go (0: fail at once).
    poll : float
        Seconds between tries while waiting.
    log : callable, optional
        Called once with a line saying whom it waits for.
    record : bool
        Write ``owner.json`` (False: a runner that only checks the folder is free before it moves it).

    Raises
    ------
    FolderOwned
        When another live process still holds the lock after ``wait`` seconds (the message names it).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "job"
    >>> with own(folder) as held:
    ...     owner_of(folder)["pid"] == os.getpid()
    True
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    deadline, told = time.time() + wait, False
    while (got := _try_lock(folder / OWNER_LOCK)) is None:
        if time.time() >= deadline:
            raise FolderOwned(
                f"job folder {folder} is owned by {_owner_text(folder)}, which is still running; "
                "wait for it or stop it, then rerun"
            )
        if log is not None and not told:
            log(f"waiting for {_owner_text(folder)}, which still owns {folder} (from an earlier run), to stop")
            told = True
        time.sleep(poll)
    handle, fd = got
    if not record:
        return Owner(folder, handle, fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = folder / f"{OWNER_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, folder / OWNER_FILE)
    return Owner(folder, handle, fd)


def _kill_self() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def die_with_runner(*, poll: float | None = 0.5) -> int | None:
    """Make this process die when the runner that started it dies; a no-op outside a runner (no
    ``$FNET_RUNNER_PID``). Returns the runner's pid, or None.

    On Linux the kernel sends SIGKILL at the runner's death (``PR_SET_PDEATHSIG``, kept across ``exec``). Then,
    and on every system, the parent is checked: a runner that died before the call means death now. ``poll``
    seconds (None: no thread) is the period of a daemon thread that checks ``os.getppid()`` (the fallback where
    there is no ``prctl``; a thread does not survive ``exec``)."""
    runner = os.environ.get(RUNNER_ENV)
    if not runner:
        return None
    runner_pid = int(runner)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the poll below still holds
            pass
    if os.getppid() != runner_pid:  # the runner died before this process could ask
        _kill_self()
    if poll is not None:

        def watch() -> None:
            while True:
                time.sleep(poll)
                if os.getppid() != runner_pid:
                    _kill_self()

        threading.Thread(target=watch, name="fnet-die-with-runner", daemon=True).start()
    return runner_pid


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fnet.owner FOLDER -- COMMAND ...``: own FOLDER, die with the runner, become COMMAND."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m fnet.owner FOLDER -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    folder, command = Path(argv[0]), argv[2:]
    die_with_runner(poll=None)  # the death signal passes through exec; a polling thread would not
    try:
        held = own(folder)
    except FolderOwned as err:
        print(f"fnet.owner: {err}", file=sys.stderr)
        return 75  # EX_TEMPFAIL
    env = {k: v for k, v in os.environ.items() if k != RUNNER_ENV}  # COMMAND's own children are not the runner's
    if held.fd is None:  # pragma: no cover - no fcntl: hold the lock here while COMMAND runs as a child
        import subprocess

        with held:
            return subprocess.call(command, env=env)
    os.set_inheritable(held.fd, True)  # COMMAND keeps the lock: it is released when COMMAND ends
    os.execvpe(command[0], command, env)
    return 1  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
