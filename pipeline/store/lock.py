"""One run per output folder: a lock file holding the holder's PID, host and start time.

A second run into the same folder refuses at once, naming the holder. A lock left by a process that died (same host,
PID gone) is taken over with a warning; a lock from another host is never taken over (its process cannot be checked
from here), the message says how to remove it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import PipelineError

log = logging.getLogger("pipeline")

LOCK_FILE = ".lock"


class LockedError(PipelineError):
    """Another run holds the output folder."""

    exit_code = 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """``with OutputLock(out_dir): ...`` holds the folder for this process."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # being written or unreadable: give the writer a moment
                    time.sleep(0.2)
                    holder = self._holder()
                if holder is not None and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    log.warning("%s: taking over the lock of process %d, which is gone (a run that was killed)",
                                self.folder, holder["pid"])
                    self.path.unlink(missing_ok=True)
                    continue
                if holder is None:
                    raise LockedError(f"{self.folder} is locked ({self.path} is unreadable); if no run uses the "
                                      "folder, delete that file") from None
                raise LockedError(
                    f"{self.folder} is in use by another run (process {holder.get('pid')} on {holder.get('host')}, "
                    f"started {holder.get('started')}); wait for it to finish, or give this run another "
                    f"--output-dir. If that process is gone, delete {self.path}") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise LockedError(f"{self.folder}: could not take the lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
