"""The tracker objects training code talks to: ``Tracker`` (protocol), ``NullTracker``, ``MlflowTracker``.

``MlflowTracker.log_metrics`` only appends to an in-memory buffer (about a
microsecond); a daemon thread sends the values with ``log_batch`` every
~1 s or as soon as 500 are waiting, so a training step never waits on SQLite
or HTTP. Every store call goes through :func:`retry_locked`, because several
Ray workers share one SQLite file and SQLite answers "database is locked"
under contention.

What is MLflow's and what is liverlab's:

* ``MlflowClient.log_batch`` splits a request into MLflow's chunks (100
  params or tags, 1,000 metrics); the limits used here are imported from
  ``mlflow.utils.validation``, never copied.
* Over-long param and tag values are cut *here*, to MLflow's limits, as the
  first ``limit - 3`` characters plus ``...``. MLflow would cut them in the
  store (``value[:limit]``, no mark in the stored value), and only while
  ``MLFLOW_TRUNCATE_LONG_VALUES`` is on in the process running the store (the
  server, for http URIs); otherwise it rejects the whole batch. Cutting first
  also gives the stored form a resumed run compares its params against. Keys are checked with MLflow's own rules
  in the caller's thread, so a bad key fails there instead of poisoning a
  background batch.
* A failed send is retried, never dropped: the values go back in front of the
  buffer. A batch MLflow had partly stored before failing is sent whole
  again; the store keeps one row per (key, timestamp, step, value), so the
  repeat adds nothing.

**No metric step twice in a run.** A trial run reopened by
:func:`liverlab.tracking.writer.open_trial_run` passes ``last_steps``: per
key, the highest step the run already held. ``log_metrics`` drops a point
whose step is at or below that key's step (the floor is fixed when the run is
reopened; points logged by this tracker are never dropped). A trial restored
from a checkpoint older than its last report reruns those steps; a reader
sees the value first logged at each step, then the rerun's values beyond it.

Re-exported by :mod:`liverlab.tracking.writer`, which builds the trackers.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from liverlab._flatten import flatten
from liverlab.tracking.client import retry_locked

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
FLUSH_THRESHOLD = 500
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
ERROR_TAG = "liverlab.error"
ATTEMPT_TAG = "liverlab.attempt"  # which attempt of a trial owns its run


# ----------------------------------------------------------------------------- helpers


def _truncate(value: Any, limit: int) -> str:
    """``str(value)``; when longer than ``limit``, its first ``limit - 3`` characters and ``...``."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_key(key: str) -> str:
    """``key`` if MLflow accepts it as a metric, param or tag name, else ValueError."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, path_not_unique, validate_param_and_metric_name

    if (
        not isinstance(key, str)
        or not key
        or len(key) > MAX_ENTITY_KEY_LENGTH
        or not validate_param_and_metric_name(key)
        or path_not_unique(key)
    ):
        raise ValueError(
            f"invalid MLflow key {key!r}: use letters, digits, '_', '-', '.', ' ', ':', '/' "
            f"(at most {MAX_ENTITY_KEY_LENGTH} characters, a relative path without '//', '.' or '..')"
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
    waiting, and sends them with ``log_batch`` (MLflow splits it). A failed
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
        last_steps: Mapping[str, int] | None = None,
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
        # Per key, the last step the run held when it was reopened: steps at or below it
        # are not logged again (module docstring).
        self._floor: dict[str, int] = dict(last_steps or {})
        self._skipped = 0
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
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        self._check_open()
        new: dict[str, str] = {}
        for key, value in flatten(dict(params)).items():
            text = _truncate(value, MAX_PARAM_VAL_LENGTH)
            old = self._params.get(_check_key(key))
            if old is None:
                new[key] = text
            elif old != text:
                log.warning("run %s: param %s already %r, not changed to %r", self.run_id, key, old, text)
        if new:  # MLflow splits the request into batches of its own size
            batch = [Param(k, v) for k, v in new.items()]
            retry_locked(self.client.log_batch, self.run_id, params=batch, synchronous=True)
        self._params.update(new)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set (or overwrite) tags; values str()-ed and truncated."""
        self._check_open()
        set_run_tags(self.client, self.run_id, tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values for ``step``; None values are skipped. Never blocks on the store.

        On a reopened run, a key's value at a step the run already had is skipped too (module docstring).
        """
        self._check_open()
        now = int(time.time() * 1000)
        step = int(step)
        rows: list[tuple[str, float, int, int]] = []
        for key, value in metrics.items():
            if value is None:
                continue
            if key not in self._known_keys:
                self._known_keys.add(_check_key(key))
            if self._floor and step <= self._floor.get(key, step - 1):
                self._note_skipped(key, step)
                continue
            rows.append((key, float(value), now, step))
        with self._lock:
            self._buffer.extend(rows)
            size = len(self._buffer)
        if size >= self._threshold:
            self._wake.set()

    def _note_skipped(self, key: str, step: int) -> None:
        """Count a point the run already had; say so once per tracker."""
        if not self._skipped:
            log.info("run %s already has %s at step %d from an earlier attempt; points at steps it has "
                     "are not logged again", self.run_id, key, step)
        self._skipped += 1

    @property
    def skipped(self) -> int:
        """Metric values dropped because the reopened run already had their step."""
        return self._skipped

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
            if not rows or self.superseded():
                return  # nothing to send, or the newer attempt logs these epochs itself
            try:
                # MLflow splits this into requests of MAX_METRICS_PER_BATCH (1,000) values.
                batch = [Metric(k, v, ts, s) for k, v, ts, s in rows]
                retry_locked(self.client.log_batch, self.run_id, metrics=batch, synchronous=True)
            except BaseException:
                # All of it goes back: chunks MLflow had already stored are stored once more
                # as the same rows, which the store keeps once (module docstring).
                with self._lock:
                    self._buffer[:0] = rows
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
    """Set tags through ``log_batch`` (MLflow splits it into its batches), values truncated."""
    from mlflow.entities import RunTag
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    batch = [RunTag(_check_key(k), _truncate(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
    if batch:
        retry_locked(client.log_batch, run_id, tags=batch, synchronous=True)
