"""One run per run directory: `RunLock` holds an exclusive lock on RUN_DIR/.lock while a run trains.

A second run in the same directory is refused with one line naming the holder. The lock is the operating
system's (`fcntl.flock`), so it dies with its process: a killed or requeued run leaves no stale lock behind
that could block the next start.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from lm_lab.errors import ConfigError


class RunLock:
    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.enabled = enabled
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self._created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 1000).decode(errors="replace").strip() or "another process"
                os.close(fd)
                self._cleanup()
                raise ConfigError(
                    f"run directory {self.run_dir} is in use by {holder}; wait for that run to end, or train in "
                    f"another hydra.run.dir"
                ) from None
            try:  # the file we locked must still be the one at the path (its last holder may have removed it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv)[:300]
        os.write(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} ({command})".encode(),
        )
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        self._cleanup()

    def _cleanup(self) -> None:
        """A refused first start leaves no empty run directory behind."""
        if self._created_dir:
            remove_if_empty(self.run_dir)


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory that holds nothing (or only an empty log, as Hydra leaves it)."""
    try:
        entries = list(run_dir.iterdir())
    except FileNotFoundError:
        return
    if all(p.is_file() and p.suffix == ".log" and p.stat().st_size == 0 for p in entries):
        for p in entries:
            p.unlink()
        run_dir.rmdir()
