"""What ``liverlab doctor`` runs on every node: plain facts, no verdicts.

These functions run inside Ray tasks pinned to each alive node (and some on
the driver too). They return dicts of facts; the driver judges them
(``liverlab.sweep.doctor``), so the verdict logic lives in one place. The
storage exchange itself is ``probe_storage.py``.
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
from liverlab.sweep.probe_storage import node_write


def probe_node(spec: dict[str, Any]) -> dict[str, Any]:
    """Phase 1 on one node: storage write + driver token, tracking, data, versions."""
    out: dict[str, Any] = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    if spec.get("probe"):
        out["storage"] = node_write(spec["probe"], spec["token"], out["node_id"])
    if spec.get("tracking"):
        out["tracking"] = tracking_probe(spec["tracking"], spec.get("tracking_token"))
    if spec.get("data"):
        out["data"] = {path: data_fingerprint(Path(path)) for path in spec["data"]}
    if spec.get("versions"):
        out["versions"] = node_versions()
    return out


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


def node_local(name: str) -> bool:
    """Names a node makes for itself in a dataset folder: the slice cache (``.cache``), lock
    files, temporary files. A fresh node's identical copy has none of them yet."""
    return name.startswith(".") or name.endswith(".lock")


def data_fingerprint(path: Path) -> dict[str, Any]:
    """Exists? And a cheap digest of its layout (names two levels deep, dataset.json bytes).

    Node-local names (``node_local``) are left out at both levels, so a node's
    slice cache does not make its copy look different from the driver's.
    """
    if not path.is_dir():
        return {"ok": False, "detail": f"{path} is not a folder on this node"}
    h = hashlib.sha256()
    count = 0
    for top in sorted(p for p in path.iterdir() if not node_local(p.name)):
        h.update(top.name.encode())
        if top.is_dir():
            subs = sorted(p for p in top.iterdir() if not node_local(p.name))
            for sub in subs[:2000]:
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
