"""One run per run directory, and no leftovers of killed ones.

:class:`RunLock` holds ``<run dir>/.var-train.lock`` for the whole of a ``var-train`` run (rank 0 of the
launch takes it; the ranks it starts, or srun's other tasks, share it). The file records the host, pid,
start time, SLURM job id and command of its holder; a second launch into the same directory stops with a
message naming the first. A lock is stale, and is taken over with a log line, when

* its holder ran on this host and that process is gone (``kill -9``, a crash, a reboot);
* it belongs to the same SLURM job (a requeued job is never alive twice);
* its holder ran on another host and has not refreshed the file's time for ``stale_after_s`` seconds (a
  daemon thread touches it every ``heartbeat_s`` seconds while the run is alive).

An ``fcntl`` lock would be simpler on one machine but is unreliable on the network file systems clusters
keep run directories on, and says nothing about who holds it; hence the plain file.

:func:`remove_stale_temp_files`: checkpoint writes go to ``.<name>.tmp-<pid>`` first and are renamed into
place (:func:`var_lightning.checkpoints.safe_io.atomic_write`); a kill while writing leaves the temporary file
behind. With the run directory locked, no other process writes there, so every such file (or sharded
checkpoint temp directory) below ``checkpoints/`` and the run directory is a leftover, and is removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".var-train.lock"
_TMP = re.compile(r"^\..+\.tmp-\d+$")


class RunDirLocked(ValueError):
    """Another ``var-train`` holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` for the length of a run (see the module docstring)."""

    def __init__(
        self, run_dir: str | os.PathLike, heartbeat_s: float = 30.0, stale_after_s: float = 180.0
    ) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "command": shlex.join(["var-train", *sys.argv[1:]]),
        }

    def _stale_reason(self, other: dict[str, Any]) -> str | None:
        """Why the lock ``other`` (read from the file) no longer guards a live run; None if it may."""
        if other.get("host") == socket.gethostname():
            pid = int(other.get("pid", -1))
            if pid == os.getpid():
                return "left by this process"
            return None if _pid_alive(pid) else f"process {pid} on this host is gone"
        job = os.environ.get("SLURM_JOB_ID")
        if job and other.get("slurm_job") == job:
            return f"left by an earlier attempt of SLURM job {job} (requeued)"
        age = time.time() - self.path.stat().st_mtime
        if age > self.stale_after_s:
            return f"host {other.get('host')} has not refreshed it for {age:.0f} s"
        return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    other = {}
                if not other:  # being written this instant, or damaged: judge by its age alone
                    try:
                        young = time.time() - self.path.stat().st_mtime < 5
                    except FileNotFoundError:
                        continue
                    if young:
                        time.sleep(1.0)
                        continue
                    reason = "the lock file is empty or damaged"
                else:
                    reason = self._stale_reason(other)
                if reason is None:
                    raise RunDirLocked(
                        f"{self.path.parent} is in use by another var-train run (pid {other.get('pid')} on host "
                        f"{other.get('host')}, started {other.get('started')}"
                        f"{', SLURM job ' + str(other['slurm_job']) if other.get('slurm_job') else ''}: "
                        f"{other.get('command')}). Two runs in one directory would overwrite each other's "
                        f"checkpoints and metrics: wait for it to finish (or stop it), or give this run its own "
                        f"directory with hydra.run.dir=...; if that run is certainly gone, delete {self.path}"
                    ) from None
                log.warning("run directory lock %s taken over: %s", self.path, reason)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self.held = True
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise RunDirLocked(f"could not take the run directory lock {self.path}; delete it if no run uses it")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        self.held = False
        try:
            mine = json.loads(self.path.read_text()).get("pid") == os.getpid()
        except (OSError, ValueError):
            mine = False
        if mine:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}


def lock_run_dir(run_dir: str | os.PathLike) -> RunLock:
    """The lock of ``run_dir`` for this process: taken now, or the one this process already holds
    (``var-train`` takes it before Hydra writes ``.hydra/`` into the folder, and the run keeps it)."""
    path = Path(run_dir).expanduser().absolute()
    lock = _HELD.get(path)
    if lock is None or not lock.held:
        lock = RunLock(path)
        lock.acquire()
        _HELD[path] = lock
    return lock


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.tmp-<pid>`` files and directories that interrupted checkpoint writes left in the
    run directory and its ``checkpoints/`` (call it holding the run's lock); returns what was removed."""
    run = Path(run_dir)
    removed = []
    for folder in (run, run / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not _TMP.match(p.name):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        size = "; ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
        log.info("removed %d temporary file(s) of interrupted checkpoint writes: %s", len(removed), size)
    return removed
