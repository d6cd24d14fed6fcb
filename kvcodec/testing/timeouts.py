"""Run a call under a time limit, so that a decoder that hangs fails a test instead of
hanging it."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

__all__ = ["TimeLimitExceeded", "call_with_timeout"]


class TimeLimitExceeded(AssertionError):
    """A call ran past its time limit (a hang, or a decoder far too slow for its input)."""


class _Expired(BaseException):
    """Raised by the alarm inside the timed call. A BaseException, so that a codec's
    ``except Exception`` cannot swallow it and turn a hang into an ordinary error."""


def call_with_timeout(fn: Callable[[], Any], seconds: float, what: str = "the call") -> Any:
    """Return ``fn()``, or raise :class:`TimeLimitExceeded` if it runs longer than ``seconds``.

    In the main thread of a Unix process the limit is a ``SIGALRM`` timer that interrupts
    ``fn`` (re-armed every 0.25 s in case ``fn`` swallows the first interruption; any
    timer that was already set is restored afterwards). Elsewhere ``fn`` runs in a daemon
    thread that is abandoned when the limit passes. Exceptions raised by ``fn`` propagate
    unchanged.

    Raises:
        TimeLimitExceeded: naming ``what`` and the limit.
    """
    if seconds is None or seconds <= 0:
        return fn()
    expired = TimeLimitExceeded(f"{what} did not finish within {seconds:g} s (a hang?)")
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        return _with_alarm(fn, seconds, expired)
    return _with_thread(fn, seconds, expired)


def _with_alarm(fn: Callable[[], Any], seconds: float, expired: TimeLimitExceeded) -> Any:
    def on_alarm(_signum, _frame):
        raise _Expired

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, 0.25)
    try:
        return fn()
    except _Expired:
        raise expired from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


def _with_thread(fn: Callable[[], Any], seconds: float, expired: TimeLimitExceeded) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="kvcodec-timed-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise expired
    if "error" in box:
        raise box["error"]
    return box["value"]
