"""Preemption: SIGTERM or SIGINT asks the loop to save at the next step boundary and stop.

Single process: Python handlers set a flag (a second SIGINT raises KeyboardInterrupt, so a
stuck run can still be interrupted). Several processes: JAX's preemption service (started by
`jax.distributed.initialize`) catches SIGTERM on any host and agrees on a step at which every
host stops; `reached_preemption_sync_point(step)` turns True there on all hosts at once, so all
of them save the same step. A local flag alone would let one host save while the others run on.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class PreemptionWatcher:
    def __init__(self) -> None:
        import jax

        self._multi = jax.process_count() > 1
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        if self._multi or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        self.signal_name = signal.Signals(signum).name
        print(
            f"{self.signal_name} received: saving a checkpoint at the next step boundary, then "
            "exiting (send SIGINT again to stop at once)",
            flush=True,
        )

    def should_stop(self, step: int) -> bool:
        """True at the step boundary where this run must save and stop. Call at every step
        (the multi-host sync point requires it)."""
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = "preemption"
                    return True
            except RuntimeError:  # the preemption service is off: nothing can reach us
                return False
            return False
        return self.signal_name is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
