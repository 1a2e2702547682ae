"""The storage probe of ``liverlab doctor`` and of the sweep's preflight.

Storage is checked by exchanging files, not by ``os.path.exists``: a path
that exists on every node may still be a different local folder on each,
and an object-store URI may reach another endpoint or bucket, or be refused
the node's credentials. The driver writes ``DRIVER_FILE`` into
``<storage>/PROBE_ROOT/<id>``; each node must read the driver's token and
write its own file with its own mounts and credentials (``node_write``), and
in a second round read every other node's file (``missing_peers``).

The same exchange serves a shared POSIX folder and an object store (any URI
``liverlab.storage`` reads through pyarrow: S3, GCS, ...). On a POSIX path a
node never creates the probe folder: that would hide a node-local folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from liverlab import storage

PROBE_ROOT = ".liverlab-doctor"
DRIVER_FILE = "driver.token"


def node_file(node_id: str) -> str:
    return f"node-{node_id}.token"


def _read(location: str) -> str:
    return storage.read_text(location) if storage.is_uri(location) else Path(location).read_text()


def _write(location: str, text: str) -> None:
    if storage.is_uri(location):
        storage.write_text(location, text)
    else:
        Path(location).write_text(text)


def _short(exc: BaseException) -> str:
    """An exception as one line (pyarrow's S3 errors run over several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def probe_location(root: str, token: str) -> str:
    """``<root>/.liverlab-doctor/<id>``; a POSIX root as every node spells it (absolute, links kept)."""
    if not storage.is_uri(root):
        root = str(Path(root).expanduser().absolute())  # not resolve(): nodes see the path, not the link
    return storage.join(root, PROBE_ROOT, token[:12])


def start_probe(probe: str, token: str) -> None:
    """Driver side: create the probe and write the driver's token (raises on failure)."""
    if not storage.is_uri(probe):
        Path(probe).mkdir(parents=True)
    _write(storage.join(probe, DRIVER_FILE), f"{token}:driver")


def end_probe(probe: str) -> None:
    """Remove the probe (and ``.liverlab-doctor`` when no other probe is in it)."""
    if storage.is_uri(probe):
        import pyarrow.fs as pafs

        try:
            fs, path = storage.filesystem(probe)
            fs.delete_dir(path)
            # pyarrow keeps the parent as an empty "folder" object: remove it too when nothing else is in it.
            parent = path.rsplit("/", 1)[0]
            if not fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
                fs.delete_dir(parent)
        except Exception:  # noqa: BLE001 - cleanup of a few bytes: never mask the verdicts
            pass
        return
    shutil.rmtree(probe, ignore_errors=True)
    try:
        Path(probe).parent.rmdir()  # .liverlab-doctor, unless another doctor runs right now
    except OSError:
        pass


def node_write(probe: str, token: str, node_id: str) -> dict[str, Any]:
    """Phase 1 on one node: see the driver's token, write (and read back) this node's own."""
    if storage.is_uri(probe):
        return _object_write(probe, token, node_id)
    folder = Path(probe)
    root = folder.parent.parent
    if not root.is_dir():
        return {"ok": False, "error": f"{root} does not exist on this node"}
    if not folder.is_dir():  # never create it: that would hide a node-local folder
        return {"ok": False, "error": f"the driver's probe folder {folder} is not visible here: "
                                      f"{root} on this node is not the driver's folder (not shared)"}
    mine = folder / node_file(node_id)
    try:
        mine.write_text(f"{token}:{node_id}")
        if mine.read_text() != f"{token}:{node_id}":
            return {"ok": False, "error": f"wrote {mine} but read back something else"}
    except OSError as exc:
        return {"ok": False, "error": f"cannot write in {folder}: {exc}"}
    try:
        seen = (folder / DRIVER_FILE).read_text()
    except OSError as exc:
        return {"ok": False, "error": f"cannot read the driver's file: {exc}"}
    if seen != f"{token}:driver":
        return {"ok": False, "error": "the driver's file has other content here (another folder of the same name?)"}
    return {"ok": True}


def _object_write(probe: str, token: str, node_id: str) -> dict[str, Any]:
    """The object-store variant: every call uses this node's own environment (credentials, endpoint)."""
    driver = storage.join(probe, DRIVER_FILE)
    try:
        seen = _read(driver)
    except Exception as exc:  # noqa: BLE001 - not found, refused, unreachable: each is the finding
        return {"ok": False, "error": f"cannot read the driver's probe object {driver} with this node's "
                                      f"credentials ({_short(exc)}): not the driver's storage, or no access"}
    if seen != f"{token}:driver":
        return {"ok": False, "error": f"the driver's probe object {driver} has other content here "
                                      "(another endpoint or bucket of the same name?)"}
    mine = storage.join(probe, node_file(node_id))
    try:
        _write(mine, f"{token}:{node_id}")
        if _read(mine) != f"{token}:{node_id}":
            return {"ok": False, "error": f"wrote {mine} but read back something else"}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": f"cannot write {mine} with this node's credentials: {_short(exc)}"}
    return {"ok": True}


def missing_peers(probe: str, token: str, node_ids: list[str]) -> list[str]:
    """Phase 2 on one node (and on the driver): which nodes' files are *not* visible."""
    missing = []
    for nid in node_ids:
        try:
            if _read(storage.join(probe, node_file(nid))) != f"{token}:{nid}":
                missing.append(nid)
        except Exception:  # noqa: BLE001 - OSError, or pyarrow's errors for an object store
            missing.append(nid)
    return missing
