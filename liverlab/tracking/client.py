"""Reaching the tracking store: the URI, one ``MlflowClient`` per URI, retry on SQLite contention.

Both sides of the package start here: the writer (:mod:`liverlab.tracking.writer`,
:mod:`liverlab.tracking.tracker`) and the readers (:mod:`liverlab.tracking.reader`,
:mod:`liverlab.tracking.read_client`, :mod:`liverlab.tracking.read_sql`,
:mod:`liverlab.tracking.artifacts`).

mlflow is imported inside :func:`client_for` only, so that importing this
module (and ``liverlab --help``) stays instant.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.tracking import MlflowClient

__all__ = ["client_for", "resolve_tracking_uri", "retry_locked", "sqlite_path"]

T = TypeVar("T")

_CLIENTS: dict[str, MlflowClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(uri: str) -> MlflowClient:
    """One ``MlflowClient`` per URI and process (store engines are costly to build)."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(uri)
        if client is None:
            from mlflow.tracking import MlflowClient

            from liverlab.tracking.schema import store_lock

            _ensure_sqlite_dir(uri)
            with store_lock(sqlite_path(uri)):  # a new SQLite store: one process creates its tables
                client = _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
        return client


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(rest) if rest.startswith("/") else Path(rest).resolve()


def _ensure_sqlite_dir(uri: str) -> None:
    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def resolve_tracking_uri(uri: str | None, default_dir: str | Path) -> str:
    """Explicit URI > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<abs default_dir>/mlflow.db``.

    Relative SQLite paths are made absolute here, once, because a Ray trial
    runs in Ray's own working directory and would otherwise open another file.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not chosen:
        return f"sqlite:///{(Path(default_dir).expanduser().resolve() / 'mlflow.db').as_posix()}"
    path = sqlite_path(chosen)
    if path is not None and not chosen.startswith("sqlite:////"):
        query = "?" + chosen.split("?", 1)[1] if "?" in chosen else ""
        return f"sqlite:///{path.as_posix()}{query}"
    return chosen


def _is_locked_error(exc: BaseException) -> bool:
    """SQLite contention shows up as OperationalError or MlflowException text."""
    return "locked" in str(exc).lower() or "busy" in type(exc).__name__.lower()


def retry_locked(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call ``fn``; on "database is locked" wait (0.05 s doubling, jittered, <= 2 s) and retry.

    Several Ray workers share one SQLite file, and SQLite answers "database is
    locked" under contention; every store call in this package goes through here.
    """
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
