"""Locations that are a POSIX path or an object-store URI (pyarrow filesystems).

A sweep's storage may be a shared folder (NFS) or a URI such as
``s3://bucket/sweeps?endpoint_override=host:9000&scheme=http`` that
``pyarrow.fs.FileSystem.from_uri`` understands (S3, GCS, HDFS, ...). The
query string carries the filesystem's options, so :func:`join` inserts path
parts before it. Credentials come from the usual environment (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).

Object stores have no locks and no atomic folder rename: a folder is
uploaded file by file with its completion marker **last**, so a reader that
finds the marker finds the whole folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from liverlab.errors import LiverlabError


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` locations other than plain local files."""
    s = str(location)
    return "://" in s and not s.startswith("file://")


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...``; for a URI the parts go into its path, before the query."""
    if not is_uri(location):
        return str(Path(location).joinpath(*parts))
    u = urlsplit(str(location))
    path = "/".join([u.path.rstrip("/"), *[p.strip("/") for p in parts]])
    return urlunsplit((u.scheme, u.netloc, path, u.query, u.fragment))


def filesystem(location: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` for a URI; errors name the location."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # unknown scheme, bad options, missing credentials
        raise LiverlabError(f"--storage {location}: not a usable filesystem URI: {exc}") from None


def exists(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str, text: str) -> None:
    """One object, written whole (object stores never show a partial object)."""
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def upload_dir(local: Path, location: str, marker: str) -> None:
    """Copy a local folder to ``location``, the ``marker`` file last."""
    fs, root = filesystem(location)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    files.sort(key=lambda p: p.relative_to(local).as_posix() == marker)  # marker last
    for p in files:
        with open(p, "rb") as src, fs.open_output_stream(f"{root}/{p.relative_to(local).as_posix()}") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def download_dir(location: str, local: Path) -> None:
    """Copy a remote folder into ``local`` (a temporary name, then rename)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(location)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            dst = tmp / info.path[len(root):].lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def node_cache_dir() -> Path:
    """Where a node keeps its copies of remote cache entries ($LIVERLAB_NODE_CACHE)."""
    return Path(os.environ.get("LIVERLAB_NODE_CACHE") or Path(tempfile.gettempdir()) / "liverlab-node-cache")


def trial_scratch(sweep_id: str, trial_id: str) -> Path:
    """A fresh node-local folder for one attempt of a sweep trial's working files.

    ``<node cache>/trials/<sweep_id>/<trial_id>/<pid>-<random>``: outside
    anything Ray Tune uploads (Tune syncs the trial folder, and on the
    driver's node uploads it whole with every experiment-state save, racing
    the trial's temporary files). Each attempt gets its own folder; folders
    of attempts whose process is gone (a killed worker) are removed here.
    The caller removes its own folder when the attempt ends.
    """
    parent = node_cache_dir() / "trials" / sweep_id / trial_id
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_scratch(folder: Path) -> None:
    """Remove an attempt's scratch folder, and its trial's and sweep's folders once empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):
        try:
            parent.rmdir()
        except OSError:  # another attempt or trial still works there
            break
