"""What ``liverlab doctor`` runs on every node: plain facts, no verdicts.

These functions run inside Ray tasks pinned to each alive node (and some on
the driver too). They return dicts of facts; the driver judges them
(``liverlab.sweep.doctor``), so the verdict logic lives in one place.

Storage is checked by exchanging files, not by ``os.path.exists``: a path
that exists on every node may still be a different local folder on each.
The driver writes ``DRIVER_FILE`` into ``<storage>/PROBE_ROOT/<id>``; each
node must see that folder and the driver's token and write its own file
(``probe_node``), and in a second round read every other node's file
(``missing_peers``).
"""

from __future__ import annotations

import hashlib
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import ray

import liverlab

PROBE_ROOT = ".liverlab-doctor"
DRIVER_FILE = "driver.token"


def _node_file(node_id: str) -> str:
    return f"node-{node_id}.token"


def probe_node(spec: dict[str, Any]) -> dict[str, Any]:
    """Phase 1 on one node: storage write + driver token, tracking, data, versions."""
    out: dict[str, Any] = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    if spec.get("probe_dir"):
        out["storage"] = _storage_write(Path(spec["probe_dir"]), spec["token"], out["node_id"])
    if spec.get("tracking"):
        out["tracking"] = tracking_probe(spec["tracking"], spec.get("tracking_token"))
    if spec.get("data"):
        out["data"] = data_fingerprint(Path(spec["data"]))
    if spec.get("versions"):
        out["versions"] = node_versions()
    return out


def _storage_write(probe: Path, token: str, node_id: str) -> dict[str, Any]:
    storage = probe.parent.parent
    if not storage.is_dir():
        return {"ok": False, "error": f"{storage} does not exist on this node"}
    if not probe.is_dir():  # never create it: that would hide a node-local folder
        return {"ok": False, "error": f"the driver's probe folder {probe} is not visible here: "
                                      f"{storage} on this node is not the driver's folder (not shared)"}
    try:
        mine = probe / _node_file(node_id)
        mine.write_text(f"{token}:{node_id}")
        if mine.read_text() != f"{token}:{node_id}":
            return {"ok": False, "error": f"wrote {mine} but read back something else"}
    except OSError as exc:
        return {"ok": False, "error": f"cannot write in {probe}: {exc}"}
    try:
        seen = (probe / DRIVER_FILE).read_text()
    except OSError as exc:
        return {"ok": False, "error": f"cannot read the driver's file: {exc}"}
    if seen != f"{token}:driver":
        return {"ok": False, "error": "the driver's file has other content here (another folder of the same name?)"}
    return {"ok": True}


def missing_peers(probe_dir: str, token: str, node_ids: list[str]) -> list[str]:
    """Phase 2 on one node (and on the driver): which nodes' files are *not* visible."""
    probe = Path(probe_dir)
    missing = []
    for nid in node_ids:
        try:
            if (probe / _node_file(nid)).read_text() != f"{token}:{nid}":
                missing.append(nid)
        except OSError:
            missing.append(nid)
    return missing


def tracking_probe(target: dict[str, Any], token: str | None) -> dict[str, Any]:
    """Can this process reach the tracking store the trials will write to?"""
    kind = target["kind"]
    if kind == "http":
        url = target["uri"].rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the user's own server
                body = resp.read(200).decode(errors="replace").strip()
                return {"ok": resp.status == 200, "detail": f"GET {url}: {resp.status} {body[:40]}"}
        except Exception as exc:  # any failure is the finding, not a crash
            return {"ok": False, "detail": f"GET {url}: {type(exc).__name__}: {exc}"}
    if kind == "folder":
        path = Path(target["folder"]) / target["token_file"]
        try:
            ok = path.read_text() == token
            return {"ok": ok, "detail": f"reads the driver's file in {path.parent}" if ok
                    else f"{path} has other content here (not the driver's folder)"}
        except OSError:
            return {"ok": False, "detail": f"does not see the driver's file {path}: "
                                           f"{path.parent} is not shared with the driver"}
    if kind == "tcp":
        try:
            with socket.create_connection((target["host"], target["port"]), timeout=10):
                return {"ok": True, "detail": f"TCP {target['host']}:{target['port']} reachable"}
        except OSError as exc:
            return {"ok": False, "detail": f"TCP {target['host']}:{target['port']}: {exc}"}
    return {"ok": None, "detail": f"{target['uri']}: scheme not checked"}


def data_fingerprint(path: Path) -> dict[str, Any]:
    """Exists? And a cheap digest of its layout (names two levels deep, dataset.json bytes)."""
    if not path.is_dir():
        return {"ok": False, "detail": f"{path} is not a folder on this node"}
    h = hashlib.sha256()
    count = 0
    for top in sorted(path.iterdir()):
        h.update(top.name.encode())
        if top.is_dir():
            for sub in sorted(top.iterdir())[:2000]:
                h.update(sub.name.encode())
                count += 1
                if sub.name == "dataset.json":
                    h.update(sub.read_bytes())
    return {"ok": True, "digest": h.hexdigest()[:16], "entries": count}


def _code_hash() -> str:
    """Digest of liverlab's own sources: same version string, different code, is caught too."""
    root = Path(liverlab.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def node_versions() -> dict[str, Any]:
    """liverlab (version and code digest), torch, Python, Ray, and the CUDA devices torch sees."""
    import torch  # only when versions are asked for: the storage probe need not load torch

    return {
        "liverlab": liverlab.__version__, "code": _code_hash(), "torch": torch.__version__,
        "python": sys.version.split()[0], "ray": ray.__version__, "cuda_devices": torch.cuda.device_count(),
    }
