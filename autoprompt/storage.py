"""Where a template search's Optuna study lives, and how it survives dead workers.

A study is in a run folder's own study.db, or in a storage several workers share (a journal
file, SQLite, PostgreSQL...). A worker can die mid-trial (SIGKILL, a lost machine): its trial
would stay RUNNING forever and hold a slot of the budget. So on a shared storage each running
trial sends a heartbeat, and a trial silent for ``GRACE_HEARTBEATS`` of them is failed by the
next worker that looks, and its params are queued to be run again. RDBStorage has this built
in (heartbeat_interval, grace_period); Optuna's JournalStorage has not, so it gets the same
through a subclass that keeps the heartbeat in a system attribute.

Ctrl-C and SIGTERM never cut a storage call in half: while one runs (in the main thread) they
are held, and raised when it returns. Cut in half, a SQLite statement's connection is
invalidated but its lock lives on in the cursor the exception's traceback keeps alive, so the
clean-up's own write (failing the stopped trial) waited out the 60 s busy timeout and then
failed: the run ended "failed" a minute later instead of "interrupted" at once.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import threading
import time
import warnings
from typing import TYPE_CHECKING

from autoprompt.errors import AutoPromptError
from autoprompt.redaction import REDACTED, redact_text, redact_url
from autoprompt.signals import signals_held

if TYPE_CHECKING:
    import optuna

    from autoprompt.runs.folder import Run

log = logging.getLogger(__name__)

GRACE_HEARTBEATS = 3  # a running trial silent for this many heartbeats is presumed dead
SQLITE_BUSY_TIMEOUT = 60  # seconds a SQLite write waits for another worker's lock
# a running trial that never sent a heartbeat (its worker died between ask and the first beat;
# Optuna would leave it RUNNING forever) is failed this many seconds after it started
NO_HEARTBEAT_GRACE = 60

def _held(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with signals_held():
            return method(*args, **kwargs)

    return call


def hold_signals_in(storage):
    """The storage, each of its methods now run with Ctrl-C/SIGTERM held (see above). Private ones
    too: Optuna's cache in front of an RDBStorage calls its ``_get_trials``."""
    if getattr(storage, "_autoprompt_held", False):
        return storage
    for name in dir(type(storage)):
        if not name.startswith("__") and callable(getattr(type(storage), name, None)):
            setattr(storage, name, _held(getattr(storage, name)))
    storage._autoprompt_held = True
    return storage


def open_storage(url: str, *, heartbeat: int | None = None):
    """An Optuna storage from a URL; a path ending in .log (or journal:PATH) is a journal file.
    ``heartbeat``: seconds between a running trial's heartbeats (None: no heartbeat)."""
    import optuna

    shown = redact_url(url)
    if shown != url:
        _REAL_URLS[shown] = url  # for study_storage: the run folder keeps only the redacted URL
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        try:
            backend = JournalFileBackend(url.removeprefix("journal:"))
        except OSError as exc:
            raise AutoPromptError(f"storage {shown!r}: cannot open the journal file ({exc.strerror or exc})") from None
        if heartbeat is None:
            return hold_signals_in(optuna.storages.JournalStorage(backend))
        return hold_signals_in(_journal_with_heartbeat()(backend, heartbeat))
    if "://" not in url:
        raise AutoPromptError(f"storage {shown!r}: expected a URL (sqlite:///path.db, postgresql://...) "
                              "or a journal file path ending in .log")
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    options = {} if heartbeat is None else {"heartbeat_interval": heartbeat, "grace_period": GRACE_HEARTBEATS * heartbeat,
                                         "heartbeat_stale_trial_callback": rerun_stale_trial}
    if url.startswith("sqlite"):  # several workers (and heartbeat threads) wait their turn to write
        options["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    elif url.startswith("postgresql"):  # a server that cannot be reached is an error, not a hang
        options["engine_kwargs"] = {"connect_args": {"connect_timeout": 15}}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage_class = optuna.storages.RDBStorage if heartbeat is None else _rdb_with_heartbeat()
                storage = storage_class(url, **options)
                if url.startswith("sqlite"):
                    _begin_immediate(storage.engine)
                return hold_signals_in(storage)
        except (IntegrityError, ProgrammingError):
            # workers started together race to create the schema in an empty database: the
            # loser's CREATE fails on what the winner made; a moment later the tables are there
            if attempt == 5:
                raise AutoPromptError(f"storage {shown!r}: could not create or open the Optuna tables") from None
            time.sleep(0.5 * (attempt + 1))
        except ImportError as exc:
            raise AutoPromptError(redact_text(f"storage {shown!r} needs a database driver: {exc}".splitlines()[0], url)) from None
        except Exception as exc:  # sqlalchemy: bad URL, server down, auth
            raise AutoPromptError(redact_text(f"storage {shown!r}: {type(exc).__name__}: {exc}".splitlines()[0], url)) from None
    raise AssertionError("unreachable")


def study_name(run: Run) -> str:
    """The study of a run in its storage: --study-name; else, on a shared storage, one name every
    worker of the task agrees on; else the run folder's name (its own study.db)."""
    settings = run.settings()
    if settings.get("study_name"):
        return settings["study_name"]
    return f"{run.config().get('task')}-template" if settings.get("storage") else run.name


def study_storage(run: Run) -> str:
    """The storage URL of a run's study: the shared one it was given, else its own study.db. A shared
    URL's password is never written to the run folder: it comes from this process (the URL it opened),
    else from $AUTOPROMPT_STORAGE."""
    shared = run.settings().get("storage")
    if not shared:
        return f"sqlite:///{(run.path / 'study.db').resolve()}"
    if REDACTED not in shared:
        return shared
    from_env = os.environ.get(STORAGE_ENV, "")
    real = _REAL_URLS.get(shared) or (from_env if redact_url(from_env) == shared else None)
    if real is None:
        raise AutoPromptError(f"storage {shared!r}: autoprompt never writes a storage password; give the URL "
                              f"again with --storage or in ${STORAGE_ENV}")
    return real


# --- secrets: a storage URL's password is never written or printed (redaction.py) -------------

STORAGE_ENV = "AUTOPROMPT_STORAGE"  # the storage URL (with its password) when --storage is not given
_REAL_URLS: dict[str, str] = {}  # redacted URL -> the URL this process was given


def use_storage_again(given: str, saved: str | None, run: object) -> None:
    """A resumed run's storage URL given again: it must be the one the run was started with (a run
    with its own study.db ignores it: $AUTOPROMPT_STORAGE may be set for other runs)."""
    if saved is None:
        return
    if redact_url(given) != saved:
        raise AutoPromptError(f"--resume {run}: the run's study is in {saved or 'its own study.db'}, "
                              f"not {redact_url(given)}")
    if given != saved:
        _REAL_URLS[saved] = given


def has_heartbeat(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """While the block runs, the trial's heartbeat is recorded (when the storage keeps them)."""
    if not has_heartbeat(study):
        yield
        return
    storage, stop = study._storage, threading.Event()

    def record() -> None:
        try:
            storage.record_heartbeat(trial._trial_id)
        except Exception as exc:  # a storage hiccup must not kill the trial; the next beat may pass
            log.debug("heartbeat of trial %d failed: %s", trial.number, exc)

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            record()

    record()  # the first one now: until it is stored, the trial's death is only found after NO_HEARTBEAT_GRACE

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _begin_immediate(engine) -> None:
    """Make every transaction on a SQLite study take the write lock when it begins. SQLite has no row
    locks (SELECT ... FOR UPDATE is a no-op), so Optuna's check-then-set steps raced between workers:
    two workers popped the same waiting trial and both ran it, or both failed a stale trial and
    queued it twice. With BEGIN IMMEDIATE those steps run one worker at a time (SQLAlchemy's recipe
    for pysqlite: the driver's own implicit BEGIN turned off)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners (the schema check) are not reused


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials of dead workers (no heartbeat within the grace period) and queue them again."""
    import optuna

    if has_heartbeat(study):
        with signals_held(), warnings.catch_warnings():  # failed and requeued, or neither
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def run_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial's params (those it had chosen) to be run again, marked as its rerun."""
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def rerun_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """The storage's callback for a trial failed as stale: run its params again."""
    run_again(study, trial)
    log.warning("trial %d lost its worker (no heartbeat): marked failed, queued again", trial.number)


def requeue_interrupted(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process (a study no other worker shares): failed, queued again."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        with signals_held():  # failed and requeued, or neither
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            run_again(study, t)
        log.info("trial %d was interrupted: marked failed, queued again", t.number)


def give_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial this worker stops (Ctrl-C, SIGTERM): failed, its params queued for whoever goes on.
    Called while the interrupt is being handled: a storage error here is logged, not raised, so
    the interrupt still ends the run (a trial left RUNNING is requeued by --resume or heartbeats)."""
    import optuna

    try:
        with signals_held():
            frozen = study._storage.get_trial(trial._trial_id)
            if frozen.state != optuna.trial.TrialState.RUNNING:
                return
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            run_again(study, frozen)
    except Exception as exc:
        log.warning("trial %d could not be marked failed: %s", trial.number, exc)


@functools.cache
def _journal_with_heartbeat():
    """JournalStorage that records heartbeats (Optuna's has none): the time of the last one is a
    system attribute of the trial; workers' clocks must agree to well within the grace period.
    (A class made on first use: optuna is imported only when a study is opened.)"""
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat

    class JournalStorageWithHeartbeat(optuna.storages.JournalStorage, BaseHeartbeat):
        def __init__(self, backend, heartbeat_interval: int) -> None:
            super().__init__(backend)
            self.heartbeat_interval = heartbeat_interval

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, "autoprompt:heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # told a moment ago

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now, grace = time.time(), GRACE_HEARTBEATS * self.heartbeat_interval
            running = self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))

            def stale(t) -> bool:
                last = t.system_attrs.get("autoprompt:heartbeat")
                return _never_beat_too_long(t.datetime_start) if last is None else now - last > grace

            return [t._trial_id for t in running if stale(t)]

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return rerun_stale_trial

    return JournalStorageWithHeartbeat


@functools.cache
def _rdb_with_heartbeat():
    """RDBStorage whose stale trials include running ones that never sent a heartbeat, once
    NO_HEARTBEAT_GRACE has passed since they started (by the workers' clocks, which must agree)."""
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.orm import selectinload

    class RDBStorageWithHeartbeat(optuna.storages.RDBStorage):
        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            """Optuna's rule (the last heartbeat older than the grace period, by the database's
            clock), and running trials that never sent one."""
            with _create_scoped_session(self.scoped_session, True) as session:
                db_now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
                running = (session.query(models.TrialModel).options(selectinload(models.TrialModel.heartbeats))
                           .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                           .filter(models.TrialModel.study_id == study_id).all())
                return [t.trial_id for t in running if (
                    _never_beat_too_long(t.datetime_start) if not t.heartbeats
                    else (db_now - t.heartbeats[0].heartbeat).total_seconds() > self.grace_period)]

    return RDBStorageWithHeartbeat


def _never_beat_too_long(started: datetime.datetime | None) -> bool:
    """A running trial without any heartbeat: presumed dead NO_HEARTBEAT_GRACE after it started."""
    return started is not None and (datetime.datetime.now() - started).total_seconds() > NO_HEARTBEAT_GRACE
