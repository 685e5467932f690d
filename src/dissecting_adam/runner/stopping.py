"""How a training session is asked to stop: SIGTERM (a SLURM time limit, ``kill``, the GPU
check's deadline) and submitit's SIGUSR2 become a ``stop()`` poll that the training loop
reads between steps, so that a run checkpoints and records ``interrupted`` instead of dying
in the middle of a step."""

from __future__ import annotations

import contextlib
import signal
import threading

from .loop import Interrupted


@contextlib.contextmanager
def stop_on_sigterm():
    """Yield a ``stop()`` poll that turns True after SIGTERM (main thread only).

    Also after SIGUSR2 when the process already has a handler for it: submitit's, which it
    sends ahead of a SLURM time limit to requeue the job and exit. That handler is passed
    the signal on leaving, once the run has checkpointed and recorded ``interrupted``;
    called at once it would end the process in the middle of a step. A SIGTERM that the
    loop never saw (it came after the last step) is passed on when the session ends: to
    the handler before (the reproduction's raises ``Interrupted``), or as ``Interrupted``.
    """
    received, seen = [], []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def note(signum, frame):
        received.append(signum)

    def poll() -> bool:
        if received:
            seen.append(True)  # the loop stops (Interrupted) on a True
        return bool(received)

    previous = signal.signal(signal.SIGTERM, note)
    usr2 = getattr(signal, "SIGUSR2", None)
    scheduler = signal.getsignal(usr2) if usr2 is not None else None
    chained = callable(scheduler)
    if chained:
        signal.signal(usr2, note)
    try:
        yield poll
    finally:
        signal.signal(signal.SIGTERM, previous)
        if chained:
            signal.signal(usr2, scheduler)
            if usr2 in received:
                scheduler(usr2, None)
        if signal.SIGTERM in received and not seen:
            # It came after the loop's last look (the runs finished and are recorded): passed
            # on, not lost; else the process would go on past a stop it was asked for.
            if callable(previous):
                previous(signal.SIGTERM, None)
            elif previous == signal.SIG_DFL:
                raise Interrupted("SIGTERM received after the last step (the run finished)")
