"""Ctrl-C and SIGTERM held while a block runs (a study's storage call, an atomic file write) and raised when it
ends, so an interrupted run never leaves half of a write behind."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Hold:
    depth = 0  # nested held blocks (main thread only)
    pending: list[int] = []


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM that come while the block runs are raised when it ends (in the main
    thread, where Python runs signal handlers; elsewhere, and when a handler was not set from
    Python, the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _Hold.depth:
        _Hold.depth += 1
        try:
            yield
        finally:
            _Hold.depth -= 1
        return
    saved = {s: signal.getsignal(s) for s in _HELD_SIGNALS}
    if None in saved.values():
        yield
        return
    _Hold.pending = []
    for s in _HELD_SIGNALS:
        signal.signal(s, _hold)
    _Hold.depth = 1
    try:
        yield
    finally:
        _Hold.depth = 0
        for s, handler in saved.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(_Hold.pending):  # each once, in the order they came
            _deliver(s, saved[s])


def _hold(signum: int, frame) -> None:
    _Hold.pending.append(signum)


def _deliver(signum: int, handler) -> None:
    if callable(handler):
        handler(signum, sys._getframe(1))  # Python's SIGINT handler raises KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
    # SIG_IGN: ignored, as it would have been
