"""The tracker objects training code talks to: ``Tracker`` (protocol), ``NullTracker``, ``MlflowTracker``.

``MlflowTracker.log_metrics`` only appends to an in-memory buffer (about a
microsecond); a daemon thread sends the values with ``log_batch`` every
~1 s or as soon as 500 are waiting, so a training step never waits on SQLite
or HTTP. Every store call goes through :func:`retry_locked`, because several
Ray workers share one SQLite file and SQLite answers "database is locked"
under contention.

Re-exported by :mod:`liverlab.tracking.writer`, which builds the trackers.
"""

from __future__ import annotations

import atexit
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from liverlab._flatten import flatten

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's own limits (mlflow.utils.validation); repeated here so that we can
# truncate *before* the store rejects a whole batch for one long value.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100

FLUSH_INTERVAL_S = 1.0
FLUSH_THRESHOLD = 500
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
ERROR_TAG = "liverlab.error"
ATTEMPT_TAG = "liverlab.attempt"  # which attempt of a trial owns its run

# Keys MLflow accepts: alphanumerics, underscores, dashes, periods, spaces,
# colons and slashes. Checked in the caller's thread so a bad key fails loudly
# there instead of poisoning a background batch.
_KEY_RE = re.compile(r"^[\w\-. :/]+$")


# ----------------------------------------------------------------------------- helpers


def _is_locked_error(exc: BaseException) -> bool:
    """SQLite contention shows up as OperationalError or MlflowException text."""
    return "locked" in str(exc).lower() or "busy" in type(exc).__name__.lower()


def retry_locked(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call ``fn``; on "database is locked" wait (0.05 s doubling, jittered, <= 2 s) and retry."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is contention
            if attempt == attempts - 1 or not _is_locked_error(exc):
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2.0, 2.0)
    raise AssertionError("unreachable")  # pragma: no cover


def _truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY_RE.match(key):
        raise ValueError(
            f"invalid MLflow key {key!r}: use letters, digits, '_', '-', '.', ' ', ':', '/' "
            f"(at most {MAX_KEY_LENGTH} characters)"
        )
    return key


# ----------------------------------------------------------------------------- trackers


@runtime_checkable
class Tracker(Protocol):
    """What training functions receive; see ``MlflowTracker`` for the semantics."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str = "FINISHED", error: str | None = None) -> None: ...


class NullTracker:
    """Tracking switched off: every call is a no-op (tests, quick local runs)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Ignore params."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Ignore tags."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Ignore metrics."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Ignore artifacts."""

    def log_text(self, text: str, name: str) -> None:
        """Ignore text."""

    def flush(self) -> None:
        """Nothing buffered."""

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Nothing to end."""


_OPEN_TRACKERS: weakref.WeakSet[MlflowTracker] = weakref.WeakSet()


@atexit.register
def _flush_open_trackers() -> None:
    """Send what is still buffered when the interpreter exits without finish()."""
    for tracker in list(_OPEN_TRACKERS):
        try:
            tracker.flush()
        except Exception as exc:  # noqa: BLE001 - best effort at exit
            log.warning("liverlab: could not flush run %s at exit: %s", tracker.run_id, exc)


class MlflowTracker:
    """One MLflow run. Built by :func:`open_trial_run`; thread-safe.

    ``log_metrics`` appends ``(key, value, timestamp, step)`` tuples to a list
    under a lock and returns (microseconds). A daemon thread wakes every
    ``flush_interval`` seconds, or as soon as ``flush_threshold`` values are
    waiting, and sends them with ``log_batch`` (<= 1000 per request). A failed
    send puts the values back in front of the buffer and is retried on the
    next wake-up, so a short store outage loses nothing; ``flush()`` and
    ``finish()`` send synchronously and raise if the store stays unreachable.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        existing_params: Mapping[str, str] | None = None,
        attempt: str | None = None,
        flush_interval: float = FLUSH_INTERVAL_S,
        flush_threshold: int = FLUSH_THRESHOLD,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self._params: dict[str, str] = dict(existing_params or {})
        self._buffer: list[tuple[str, float, int, int]] = []
        self._lock = threading.Lock()  # guards _buffer
        self._send_lock = threading.Lock()  # one sender at a time keeps batches in order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threshold = flush_threshold
        self._interval = flush_interval
        self._known_keys: set[str] = set()
        self._finished = False
        self._warned = False
        # Set by open_trial_run: the run belongs to the newest attempt of its trial. A stale
        # attempt (a worker orphaned by a killed driver or a lost node, still running) must
        # neither end the run nor add metrics once a newer attempt has reopened it.
        self._attempt = attempt
        self._superseded = False
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-flush-{run_id[:8]}", daemon=True)
        self._thread.start()
        _OPEN_TRACKERS.add(self)

    # -- context manager: a crash inside ``with`` ends the run as FAILED
    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.finish("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("KILLED", error="KeyboardInterrupt")
        else:
            self.finish("FAILED", error=f"{type(exc).__name__}: {exc}")

    @property
    def finished(self) -> bool:
        """True once finish() ran."""
        return self._finished

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"run {self.run_id} is finished; open it again to log more")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flatten nested dicts with dots, str() values, truncate, send at once.

        MLflow params are immutable. On a resumed run identical values are
        skipped; a *different* value for an existing key cannot be stored, so
        it is skipped with a warning instead of failing the trial.
        """
        self._check_open()
        flat = flatten(dict(params))
        new: dict[str, str] = {}
        for key, value in flat.items():
            text = _truncate(value, MAX_PARAM_VAL_LENGTH)
            old = self._params.get(_check_key(key))
            if old is None:
                new[key] = text
            elif old != text:
                log.warning("run %s: param %s already %r, not changed to %r", self.run_id, key, old, text)
        from mlflow.entities import Param

        items = list(new.items())
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = [Param(k, v) for k, v in items[i : i + MAX_PARAMS_TAGS_PER_BATCH]]
            retry_locked(self.client.log_batch, self.run_id, params=chunk)
        self._params.update(new)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set (or overwrite) tags; values str()-ed and truncated."""
        self._check_open()
        set_run_tags(self.client, self.run_id, tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values for ``step``; None values are skipped. Never blocks on the store."""
        self._check_open()
        now = int(time.time() * 1000)
        rows: list[tuple[str, float, int, int]] = []
        for key, value in metrics.items():
            if value is None:
                continue
            if key not in self._known_keys:
                self._known_keys.add(_check_key(key))
            rows.append((key, float(value), now, int(step)))
        with self._lock:
            self._buffer.extend(rows)
            size = len(self._buffer)
        if size >= self._threshold:
            self._wake.set()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file (or folder) into the run's artifacts."""
        self._check_open()
        p = Path(path)
        if p.is_dir():
            retry_locked(self.client.log_artifacts, self.run_id, str(p), artifact_path)
        else:
            retry_locked(self.client.log_artifact, self.run_id, str(p), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        """Store ``text`` as the artifact file ``name`` (e.g. ``config.yaml``)."""
        self._check_open()
        retry_locked(self.client.log_text, self.run_id, text, name)

    def pending(self) -> int:
        """Metric values buffered but not yet sent."""
        with self._lock:
            return len(self._buffer)

    def superseded(self) -> bool:
        """True once a newer attempt of the same trial has reopened this run."""
        if self._attempt is not None and not self._superseded:
            tags = retry_locked(self.client.get_run, self.run_id).data.tags
            self._superseded = tags.get(ATTEMPT_TAG, self._attempt) != self._attempt
            if self._superseded:
                log.warning("run %s was reopened by a newer attempt; this one stops writing to it", self.run_id)
        return self._superseded

    def _send(self) -> None:
        """Send everything buffered; on failure put it back (in order) and raise."""
        from mlflow.entities import Metric

        with self._send_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if rows and self.superseded():
                return  # the newer attempt logs these epochs itself
            sent = 0
            try:
                for i in range(0, len(rows), MAX_METRICS_PER_BATCH):
                    chunk = [Metric(k, v, ts, s) for k, v, ts, s in rows[i : i + MAX_METRICS_PER_BATCH]]
                    retry_locked(self.client.log_batch, self.run_id, metrics=chunk)
                    sent = i + len(chunk)
            except BaseException:
                with self._lock:
                    self._buffer[:0] = rows[sent:]
                raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._send()
                self._warned = False
            except Exception as exc:  # noqa: BLE001 - the trainer must not die of tracking
                if not self._warned:
                    log.warning("run %s: metrics not sent yet (%s); will retry", self.run_id, exc)
                    self._warned = True

    def flush(self) -> None:
        """Send all buffered metrics now (synchronously)."""
        self._send()

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush, record ``error`` as tag ``liverlab.error`` (truncated), end the run. Idempotent."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, got {status!r}")
        if self._finished:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        try:
            self._send()
        finally:
            if self.superseded():  # the run is the newer attempt's to end
                self._finished = True
                _OPEN_TRACKERS.discard(self)
                return
            if error:
                set_run_tags(self.client, self.run_id, {ERROR_TAG: error})
            retry_locked(self.client.set_terminated, self.run_id, status)
            self._finished = True
            _OPEN_TRACKERS.discard(self)


def set_run_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags through ``log_batch`` (100 per request), values truncated."""
    from mlflow.entities import RunTag

    items = [(_check_key(k), _truncate(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        chunk = [RunTag(k, v) for k, v in items[i : i + MAX_PARAMS_TAGS_PER_BATCH]]
        retry_locked(client.log_batch, run_id, tags=chunk)
