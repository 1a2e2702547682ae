"""Atomic file and folder writes, and a file-hash helper.

Every output of the data layer is written under a temporary name in the same
folder and then renamed into place: a rename within one file system is atomic,
so a reader (another Ray trial, a crashed import re-run) sees either the old
file, the complete new file, or nothing, never a half-written file that looks
complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def temp_sibling(path: Path, suffix: str = "") -> Path:
    """A unique hidden name beside ``path`` (same folder, so os.replace is atomic).

    ``suffix`` keeps extensions that writers dispatch on (``.nii.gz``, ``.png``).
    """
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}{suffix}"


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on failure delete it.

    >>> with atomic_path(out / "x.json") as tmp:
    ...     tmp.write_text("{}")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        # After a successful replace tmp no longer exists; after a failure it
        # may, and must not be left behind looking like data.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_with(path: str | Path, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``writer(tmp)`` and rename ``tmp`` to ``path`` if it returns."""
    with atomic_path(path, suffix) as tmp:
        writer(tmp)


@contextlib.contextmanager
def staging_dir(parent: str | Path, prefix: str = ".staging-") -> Iterator[Path]:
    """A temporary folder inside ``parent``, removed on exit whatever happens.

    Callers move finished files out of it with ``os.replace`` before it is
    removed; whatever is still inside on an error is discarded.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir (not tempfile.mkdtemp, which makes it 0700) so that a staging
    # folder renamed into place has the same permissions as any other folder.
    tmp = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of ``obj`` as canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
