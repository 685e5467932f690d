"""Sections of a timed check, each with its share of a wall-time budget.

``run_sections`` runs the sections in order. Section i gets the time left times its weight
over the weights of the sections still to run (at least its ``floor_s``), so time one
section leaves unused goes to the later ones. A section polls its ``Context``
(``ctx.out_of_time()``) between units of work and stops when its share is spent; if it
overruns its share by more than a grace period, an alarm stops it where it is
(``BudgetSpent``). Either way it is recorded as "stopped at budget" with what it had
recorded so far. A section that raises is recorded as "failed" with a summary of the
traceback, and the next one runs. After every section ``on_update`` gets all records (the
report is written there, so a killed check still leaves one).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .timing import Deadline

OK, FAILED, STOPPED, PENDING = "ok", "failed", "stopped at budget", "not run yet"
INTERRUPTED = "interrupted"


class BudgetSpent(BaseException):
    """A section's share of the budget is spent (a BaseException: ``except Exception`` in
    the measuring code does not swallow it)."""


class CapReached(BaseException):
    """One measurement inside a section ran past its own cap (``cap``)."""


@dataclass
class Context:
    """What a section sees: its deadline, what earlier sections left in ``shared``, and
    where it records its tables, notes and data."""

    name: str
    deadline: Deadline
    share_s: float
    shared: dict
    tables: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    stopped: bool = False

    def left(self) -> float:
        return self.deadline.left()

    def out_of_time(self) -> bool:
        """True (and the section marked stopped) once the share is spent."""
        expired = self.deadline.expired()
        self.stopped = self.stopped or expired
        return expired

    def table(self, title: str, rows: list[dict], columns: list[str] | None = None) -> None:
        """A table of ``rows`` (dicts); the section may go on appending to ``rows``, so
        that a section stopped half-way keeps what it had measured. ``columns``: default
        every key of the rows, in order of appearance."""
        self.tables.append({"title": title, "columns": columns, "rows": rows})

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[Context], None]
    weight: float = 1.0
    floor_s: float = 5.0


def shares(weights: list[float], left_s: float) -> float:
    """The share of the first of ``weights`` in ``left_s`` seconds."""
    return max(left_s, 0.0) * weights[0] / sum(weights)


def default_grace(share_s: float) -> float:
    """How far past its share a section may run before the alarm stops it."""
    return max(3.0, 0.1 * share_s)


def run_sections(
    sections: list[Section],
    budget_s: float,
    shared: dict | None = None,
    on_update: Callable[[list[dict]], None] = lambda records: None,
    grace: Callable[[float], float] = default_grace,
) -> list[dict]:
    """Run ``sections`` in ``budget_s`` seconds (about: a section that overruns its share
    is stopped ``grace(share)`` seconds later); return their records."""
    shared = {} if shared is None else shared
    end = time.perf_counter() + budget_s
    records = [{"name": s.name, "title": s.title, "status": PENDING} for s in sections]
    on_update(records)
    for i, section in enumerate(sections):
        left = end - time.perf_counter()
        share = max(shares([s.weight for s in sections[i:]], left), section.floor_s)
        ctx = Context(section.name, Deadline.after(share), share, shared)
        status, error, t0 = OK, None, time.perf_counter()
        try:
            with alarm(share + grace(share)):
                section.run(ctx)
            status = STOPPED if ctx.stopped else OK
        except BudgetSpent:
            status = STOPPED
        except Exception as err:
            status, error = FAILED, failure(err)
        except BaseException:  # Ctrl-C, SIGTERM: record, write, and stop
            records[i].update(record(ctx, INTERRUPTED, time.perf_counter() - t0))
            on_update(records)
            raise
        records[i].update(record(ctx, status, time.perf_counter() - t0, error))
        on_update(records)
    return records


def record(ctx: Context, status: str, seconds: float, error: dict | None = None) -> dict:
    for table in ctx.tables:
        table["columns"] = table["columns"] or columns(table["rows"])
    return {
        "status": status,
        "seconds": seconds,
        "share_s": ctx.share_s,
        "error": error,
        "notes": ctx.notes,
        "tables": ctx.tables,
        "data": ctx.data,
    }


def columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def failure(err: BaseException, frames: int = 6) -> dict:
    """The exception and the last ``frames`` frames of its traceback."""
    tb = traceback.extract_tb(err.__traceback__)[-frames:]
    return {
        "error": "".join(traceback.format_exception_only(type(err), err)).strip(),
        "traceback": [f"{f.filename}:{f.lineno} in {f.name}" for f in tb],
    }


@contextlib.contextmanager
def _timer(seconds: float, error: Exception) -> Iterator[None]:
    """Raise ``error`` in the main thread after ``seconds`` (SIGALRM), then disarm and put
    the previous handler back."""

    def ring(signum, frame):
        raise error

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise BudgetSpent in this (main) thread after ``seconds``; elsewhere, do nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _timer(seconds, BudgetSpent(f"stopped after {seconds:.0f} s")):
        yield


@contextlib.contextmanager
def cap(seconds: float) -> Iterator[None]:
    """Raise CapReached in this (main) thread after ``seconds``, inside a section's
    ``alarm``: when the section's alarm is due first it is left alone, and after the block
    it is re-armed with the time it had left (elsewhere, do nothing)."""
    outer, _ = signal.getitimer(signal.ITIMER_REAL)
    if threading.current_thread() is not threading.main_thread() or 0 < outer <= seconds:
        yield
        return

    start = time.perf_counter()
    try:
        with _timer(seconds, CapReached(f"capped after {seconds:.0f} s")):
            yield
    finally:
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.perf_counter() - start), 0.01))
