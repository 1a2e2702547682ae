"""A new SQLite tracking store, safe to share from its first second.

MLflow creates the tables of an empty SQLite database when a client first
opens it (``SqlAlchemyStore.__init__``), without a lock: two sweeps started
together on one new ``sqlite:///`` file both see no tables, both create them,
and the second dies with "table experiments already exists". Opening the
store under a file lock beside the database (``mlflow.db.lock``) makes the
second process wait and then find the tables. Only the first open of a URI
in a process takes the lock (clients are cached per URI).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

LOCK_TIMEOUT_S = 300.0  # schema creation and migrations take seconds; a stuck holder is an error


@contextlib.contextmanager
def store_lock(db_path: Path | None) -> Iterator[None]:
    """Hold ``<db>.lock`` while a SQLite store is opened (no-op for other stores)."""
    if db_path is None:
        yield
        return
    from filelock import FileLock

    db_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db_path) + ".lock", timeout=LOCK_TIMEOUT_S):
        yield
