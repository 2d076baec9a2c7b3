"""Ctrl-C and SIGTERM never cut an Optuna storage call in half.

A SIGINT that lands inside a SQLite statement invalidates its connection, but the cursor the
exception's traceback keeps alive still holds the database lock; the clean-up's own write (failing
the stopped trial) then waits out the busy timeout and fails. So storage calls run with the two
signals held, and they are raised when the call returns. The sweep below sends a real SIGINT at
every SQL statement of a short study, and checks that the interrupt still comes and the clean-up
always works.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import optuna
import pytest
from sqlalchemy import event

from autoprompt import storage as storage_module
from autoprompt.storage import give_back, hold_signals_in, open_storage, signals_held


class Stop(Exception):
    pass


def test_a_signal_inside_the_block_is_raised_when_it_ends() -> None:
    before = signal.getsignal(signal.SIGINT)
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            signal.raise_signal(signal.SIGINT)
            ran.append("the rest of the block")
    assert ran == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is before


def test_nested_blocks_raise_once_at_the_outermost_end() -> None:
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            with signals_held():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
            ran.append("outer block after the inner one")
    assert ran == ["outer block after the inner one"]


def test_sigterm_goes_to_its_own_handler_afterwards() -> None:
    def handler(signum, frame):
        raise Stop(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Stop) as stopped:
            with signals_held():
                signal.raise_signal(signal.SIGTERM)
        assert stopped.value.args == (signal.SIGTERM,)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with signals_held():
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_other_threads_run_the_block_as_it_is() -> None:
    seen = []

    def work() -> None:
        with signals_held():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


def _short_study(study: optuna.Study) -> None:
    """What a template search does with its study, three trials over."""
    for _ in range(3):
        trial = study.ask()
        trial.set_user_attr("worker", "test")
        x = trial.suggest_categorical("x", [0, 1, 2, 3])
        trial.report(float(x), 1)
        study.tell(trial, float(x))


def test_ctrl_c_at_any_sql_statement_leaves_a_storage_the_clean_up_can_write(tmp_path: Path, monkeypatch,
                                                                              caplog) -> None:
    """A real SIGINT right after each statement in turn (where, unheld, it broke the clean-up)."""
    monkeypatch.setattr(storage_module, "SQLITE_BUSY_TIMEOUT", 0.5)  # a lock left held: fail fast, not in 60 s
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage, reader = open_storage(url), open_storage(url)
    count = [0, 0]  # statements so far, the one to interrupt

    def interrupt(*args) -> None:
        count[0] += 1
        if count[0] == count[1]:
            signal.raise_signal(signal.SIGINT)

    event.listen(storage.engine, "after_cursor_execute", interrupt)
    counted = optuna.create_study(storage=storage, study_name="count", direction="maximize")
    count[:] = [0, -1]
    _short_study(counted)
    total = count[0]
    assert total > 50
    S = optuna.trial.TrialState
    for at in range(1, total + 1):
        study = optuna.create_study(storage=storage, study_name=f"s{at}", direction="maximize")
        hold_signals_in(study._storage)  # as template_search does
        count[:] = [0, at]
        with pytest.raises(KeyboardInterrupt):
            _short_study(study)
            study.ask()  # (a signal at the very last statement is raised by now)
        count[1] = -1
        caplog.clear()
        for t in study.get_trials(states=(S.RUNNING,)):  # what the search's clean-up does with the trial it stopped
            give_back(study, optuna.Trial(study, t._trial_id))
        assert not [r for r in caplog.records if "could not be marked failed" in r.getMessage()], at
        saved = optuna.load_study(study_name=f"s{at}", storage=reader).trials
        assert not [t for t in saved if t.state == S.RUNNING], at
        assert all(t.state == S.COMPLETE for t in saved if t.value is not None), at
