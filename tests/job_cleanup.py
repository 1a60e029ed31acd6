"""Kill what a test's jobs left running: the one place tests do it, and safely.

A job's ``pids.json`` records process-group IDs. Once the job has ended, the kernel may hand those IDs to
an unrelated program, such as another test's job or server, or a CI process. So a group is killed only
while its leader still works in the test's home (its cwd is a workspace there), never by the number
alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

__all__ = ["kill_jobs"]


def _runs_under(pid: int, home: Path) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(home.resolve())
    except OSError:
        return False


def kill_jobs(home: Path) -> None:
    """SIGKILL every job, sidecar and launcher group started under ``home`` that is still running there."""
    for pids_file in home.glob("work/*/.job-*/pids.json"):
        with contextlib.suppress(OSError, ValueError):
            pids = json.loads(pids_file.read_text())
            # the launcher first: alive for a moment after its job dies, it would write the exit record a
            # "killed behind the controller's back" test must not find
            for key in ("launcher", "sidecar", "job"):
                if pids.get(key) and _runs_under(int(pids[key]), home):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(pids[key]), signal.SIGKILL)
