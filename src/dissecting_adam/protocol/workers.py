"""The records of runs whose packed worker process died, or whose pool broke under them.

``launch.Packed`` knows which worker took a task (a ticket file with its pid) and how each
worker ended (its exit code); these helpers turn that into the runs' own records: a run
whose worker died has its running session and its summary recorded ``failed``; a run
stopped with a broken pool before its session could say so is recorded ``interrupted``,
and resumes in a new pool.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from ..runner import files
from ..runner.session import now_utc
from ..runner.spec import RunSpec

log = logging.getLogger(__name__)


def finished(spec: RunSpec) -> bool:
    try:
        return spec.run_dir().is_finished(spec.identity())
    except (files.ResultsError, OSError):
        return False


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def ticket_pid(path: Path) -> int | None:
    """The pid of the worker that took the task (None: no worker started it)."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _running_sessions(run, pids) -> list[dict]:
    """The sessions of ``run`` still recorded as running by one of ``pids``."""
    try:
        sessions = files.read_json(run.environment_file).get("sessions", [])
    except (FileNotFoundError, files.ResultsError):
        return []
    return [s for s in sessions if s.get("status") == "running" and s.get("pid") in pids]


def record_death(spec: RunSpec, pid: int | None, why: str) -> str | None:
    """Record that the worker training ``spec`` died: its running session and its summary
    say failed (a run that finished before is left alone). Returns the line for the
    report, or None for a finished run."""
    run = spec.run_dir()
    line = f"{run.path} ({why})"
    try:
        if run.is_finished(spec.identity()):
            return None
        if not run.path.exists():  # it died before the run started
            return line
        with files.RunLock(run.path):  # released by the dead worker; nobody else trains it
            changes = {"status": "failed", "end": now_utc(), "error": why}
            for session in _running_sessions(run, {pid}):
                run.update_session(session["start"], changes)
            if run.summary() is None:
                run.write_summary({"status": "failed", "error": why})
    except (files.ResultsError, OSError) as err:
        return f"{line}; not recorded: {one_line(err)}"
    return line


def release(spec: RunSpec, pids: set[int]) -> None:
    """A run stopped with a broken pool before its session could record it: the session
    is no longer running (interrupted), and the run resumes in a new pool."""
    run = spec.run_dir()
    try:
        if not run.path.exists() or not _running_sessions(run, pids):
            return
        with files.RunLock(run.path):
            for session in _running_sessions(run, pids):
                run.update_session(session["start"], {
                    "status": "interrupted", "end": now_utc(),
                    "error": "stopped when another worker of its pool died; resumed",
                })  # fmt: skip
    except (files.ResultsError, OSError) as err:
        log.warning("%s: %s", run.path, one_line(err))
