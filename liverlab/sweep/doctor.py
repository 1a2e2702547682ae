"""``liverlab doctor``: is this Ray cluster ready to run a sweep?

A sweep on a cluster silently assumes things that hold on one machine: that
every node sees the sweep storage (Tune's checkpoints, the pipeline cache,
the SQLite file), the data, the same code, and the tracking server. When one
of them does not hold, trials fail minutes later on one node with an error
that does not name the cause. The doctor checks them up front, **from every
node**: a tiny task (no CPU asked, so a busy cluster still answers) is pinned
to each alive node with ``NodeAffinitySchedulingStrategy``.

Storage is checked by exchanging files, not by ``os.path.exists``: a path
that exists on every node may still be a different local folder on each.
The driver writes a token file into ``<storage>/.liverlab-doctor/<uuid>``;
every node must see that folder and the driver's token, write its own file,
and (second round) read back every other node's file; the driver reads back
the nodes' files too. An object-store URI gets the same exchange, each node
with its own credentials (``probe_storage.py``). The same token exchange checks the folder of a SQLite
tracking store; an HTTP tracking server must answer ``GET /health`` from
every node.

This module is the driver's side: it starts the probes, and judges what they
return. The code run on each node is ``node_probe.py``; the table and its
rendering are ``doctor_table.py``. ``preflight.quick_check`` is the cheap part
(resources, storage, tracking, the sweep's data; no version probe), run by
``liverlab sweep`` on multi-node clusters.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from liverlab.sweep.cluster import alive_nodes, connect, node_name
from liverlab.sweep.doctor_table import FAIL, OK, WARN, Check, render
from liverlab.sweep.node_probe import data_fingerprint, node_versions, probe_node, tracking_probe
from liverlab.sweep.probe_storage import PROBE_ROOT, end_probe, missing_peers, probe_location, start_probe
from liverlab.tracking.client import sqlite_path

_DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


# ----------------------------------------------------------------------------- probes and verdicts


def cluster_checks(address: str | None = None) -> list[Check]:
    """Nodes, CPUs and GPUs as Ray reports them."""
    nodes = ray.nodes()
    alive = alive_nodes()
    cpus = sum(n["Resources"].get("CPU", 0.0) for n in alive)
    gpus = sum(n["Resources"].get("GPU", 0.0) for n in alive)
    where = ray.get_runtime_context().gcs_address or address or os.environ.get("RAY_ADDRESS") or "local"
    verdict = OK if cpus > 0 else FAIL
    checks = [Check("ray", "cluster", verdict,
                    f"{len(alive)} node(s) alive, {cpus:g} CPU, {gpus:g} GPU (address {where}, ray {ray.__version__})"
                    + ("" if cpus else ": no CPUs, no trial can run"))]
    for n in alive:
        r = n["Resources"]
        checks.append(Check("node", node_name(n), OK, f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU, "
                                                      f"{r.get('memory', 0) / 2**30:.1f} GiB memory"))
    dead = len(nodes) - len(alive)
    if dead:
        checks.append(Check("node", "cluster", WARN, f"{dead} dead node(s) (removed or lost); ignored"))
    return checks


def _tracking_target(uri: str, probe_token: str) -> tuple[dict[str, Any], Path | None]:
    """How each node checks ``uri``; for folder stores, the token file the driver writes."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("http", "https"):
        return {"kind": "http", "uri": uri}, None
    folder: Path | None = None
    if scheme == "sqlite":
        db = sqlite_path(uri)
        folder = db.parent if db is not None else None
    elif scheme in ("", "file"):
        folder = Path(parsed.path if scheme else uri)
    if folder is not None:
        token_file = f"{PROBE_ROOT}-{probe_token[:12]}.token"
        return {"kind": "folder", "uri": uri, "folder": str(folder), "token_file": token_file}, folder / token_file
    if scheme in _DB_PORTS and parsed.hostname:
        return {"kind": "tcp", "uri": uri, "host": parsed.hostname, "port": parsed.port or _DB_PORTS[scheme]}, None
    return {"kind": "other", "uri": uri}, None


def _pinned(fn: Any, node_id: str) -> Any:
    # num_cpus=0: the probe must run even while trials hold every CPU of the node.
    return ray.remote(num_cpus=0, max_retries=0)(fn).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))


def _gather(refs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """node id -> result, or an Exception (task error or no answer in time)."""
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    out: dict[str, Any] = {}
    for nid, ref in refs.items():
        if ref not in done:
            ray.cancel(ref, force=True)
            out[nid] = TimeoutError(f"no answer in {timeout_s:g} s (node busy or unreachable)")
            continue
        try:
            out[nid] = ray.get(ref)
        except Exception as exc:  # e.g. liverlab not importable there: that is a finding
            cause = getattr(exc, "cause", None) or exc
            out[nid] = RuntimeError(f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
    return out


def probe_nodes(storage: str | None, tracking_uri: str | None, data: list[str] | None = None,
                versions: bool = False, timeout_s: float = 60.0) -> list[Check]:
    """The per-node checks (storage, tracking, data, versions), one task per alive node."""
    nodes = alive_nodes()
    names = {n["NodeID"]: node_name(n) for n in nodes}
    gpus = {n["NodeID"]: n["Resources"].get("GPU", 0.0) for n in nodes}
    token = uuid.uuid4().hex
    checks: list[Check] = []
    spec: dict[str, Any] = {"token": token, "data": data, "versions": versions}
    probe: str | None = None
    if storage:  # a shared folder or an object store: the same token exchange (probe_storage.py)
        probe = probe_location(storage, token)
        try:
            start_probe(probe, token)
            spec["probe"] = probe
        except Exception as exc:  # noqa: BLE001 - OSError, pyarrow's errors, a bad URI: the verdict
            checks.append(Check("storage", "driver", FAIL, f"cannot write {probe}: {' '.join(str(exc).split())[:300]}"))
            end_probe(probe)
            probe = None
    cleanup: list[Path] = []
    if tracking_uri:
        checks += _tracking_driver(tracking_uri, token, spec, cleanup)
    driver: dict[str, Any] = {}
    if data:
        driver["data"] = {path: data_fingerprint(Path(path)) for path in data}
        for path, d in driver["data"].items():
            checks.append(Check("data", "driver", OK if d["ok"] else FAIL,
                                f"{path}: {d['entries']} entries" if d["ok"] else d["detail"]))
    if versions:
        driver["versions"] = v = node_versions()
        checks.append(Check("versions", "driver", OK, f"liverlab {v['liverlab']} (code {v['code']}), "
                                                      f"torch {v['torch']}, python {v['python']}, ray {v['ray']}"))
    first: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    writers: list[str] = []
    try:
        first = _gather({nid: _pinned(probe_node, nid).remote(spec) for nid in names}, timeout_s)
        writers = [nid for nid, r in first.items() if isinstance(r, dict) and r.get("storage", {}).get("ok")]
        if probe is not None and writers:
            # Second round: every node (and the driver) reads back what the others wrote.
            refs = {nid: _pinned(missing_peers, nid).remote(probe, token, writers) for nid in writers}
            peers = _gather(refs, timeout_s)
            missing = missing_peers(probe, token, writers)
            checks.append(Check("storage", "driver", FAIL if missing else OK,
                                f"wrote {storage}; reads the files of {len(writers) - len(missing)}"
                                f"/{len(writers)} node(s)"
                                + (f"; missing: {', '.join(names[m] for m in missing)}" if missing else "")))
        elif probe is not None:
            checks.append(Check("storage", "driver", FAIL if names else OK,
                                f"wrote {storage}; no node sees the driver's files (not shared)"))
    finally:
        if probe is not None:
            end_probe(probe)
        for path in cleanup:  # the tracking token file, a folder made for it (if empty)
            if path.is_dir():
                try:
                    path.rmdir()
                except OSError:
                    pass
            else:
                path.unlink(missing_ok=True)
    for nid, res in first.items():
        checks.extend(_judge(names[nid], res, peers.get(nid), names, len(writers), gpus[nid], driver, spec))
    order = {"storage": 0, "tracking": 1, "data": 2, "versions": 3, "probe": 4}
    return sorted(checks, key=lambda c: (order.get(c.check, 9), c.where != "driver"))


def _tracking_driver(uri: str, token: str, spec: dict[str, Any], cleanup: list[Path]) -> list[Check]:
    """The driver's own tracking check; for folder stores, the token file the nodes must read."""
    checks: list[Check] = []
    target, token_file = _tracking_target(uri, token)
    if token_file is not None:
        try:
            if not token_file.parent.exists():  # the store would create it; remove it again afterwards
                token_file.parent.mkdir(parents=True)
                cleanup.append(token_file.parent)
            token_file.write_text(token)
            cleanup.insert(0, token_file)
        except OSError as exc:
            checks.append(Check("tracking", "driver", FAIL, f"cannot write {token_file}: {exc}"))
    spec.update(tracking=target, tracking_token=token)
    tr = tracking_probe(target, token)
    checks.append(Check("tracking", "driver", _verdict(tr["ok"]), tr["detail"]))
    return checks


def _verdict(ok: bool | None) -> str:
    return WARN if ok is None else (OK if ok else FAIL)


def _judge(name: str, res: Any, peer_missing: Any, names: dict[str, str], n_writers: int, gpus: float,
           driver: dict[str, Any], spec: dict[str, Any]) -> list[Check]:
    """Verdicts for one node's facts (the driver's facts are the reference)."""
    if isinstance(res, Exception):
        return [Check("probe", name, FAIL, f"the probe task failed: {res}")]
    out: list[Check] = []
    if "storage" in res:
        st = res["storage"]
        if not st["ok"]:
            out.append(Check("storage", name, FAIL, st["error"]))
        elif isinstance(peer_missing, Exception):
            out.append(Check("storage", name, FAIL, f"second round failed: {peer_missing}"))
        elif peer_missing:
            others = ", ".join(names[m] for m in peer_missing)
            out.append(Check("storage", name, FAIL, f"does not see the files of {others}"))
        else:
            out.append(Check("storage", name, OK, f"wrote its file; reads the driver's and {n_writers - 1} other "
                                                  "node(s)' files"))
    if "tracking" in res:
        out.append(Check("tracking", name, _verdict(res["tracking"]["ok"]), res["tracking"]["detail"]))
    for path in spec.get("data") or []:
        mine, ref = (res.get("data") or {}).get(path, {}), (driver.get("data") or {}).get(path, {})
        if not mine.get("ok"):
            out.append(Check("data", name, FAIL, mine.get("detail", "no answer")))
        elif ref.get("ok") and mine["digest"] != ref["digest"]:
            # Trials on this node would read other data than the driver's: the sweep would mix them.
            out.append(Check("data", name, FAIL, f"{path}: differs from the driver's copy (layout digest: names two "
                                                 "levels deep and dataset.json, node-local caches left out)"))
        else:
            out.append(Check("data", name, OK, f"{path}: {mine['entries']} entries, same layout as the driver"))
    if spec.get("versions"):
        out.append(_judge_versions(name, res["versions"], driver["versions"], gpus))
    return out


def _judge_versions(name: str, mine: dict[str, Any], ref: dict[str, Any], gpus: float) -> Check:
    text = f"liverlab {mine['liverlab']} (code {mine['code']}), torch {mine['torch']}, python {mine['python']}"
    bad = [k for k in ("liverlab", "torch", "python") if mine[k] != ref[k]]
    if bad:
        return Check("versions", name, FAIL, text + "; the driver has " + ", ".join(f"{k} {ref[k]}" for k in bad))
    if gpus > 0 and mine["cuda_devices"] == 0:
        return Check("versions", name, WARN, text + f"; Ray offers {gpus:g} GPU but torch sees none: GPU trials fail")
    if mine["code"] != ref["code"]:
        return Check("versions", name, WARN, text + f"; liverlab sources differ from the driver's ({ref['code']})")
    return Check("versions", name, OK, text + " (same as the driver)")


def tracking_notes(tracking_uri: str | None, n_nodes: int) -> list[Check]:
    """Advice that does not need a probe: SQLite is a one-machine store."""
    if tracking_uri and tracking_uri.startswith("sqlite:") and n_nodes > 1:
        return [Check("tracking", "cluster", WARN, "SQLite on a multi-node cluster: every node writes one file over "
                                                   "the shared folder; use an `mlflow server` (docs/cluster.md)")]
    return []


def run_doctor(address: str | None = None, storage: str | None = None, tracking_uri: str | None = None,
               data: str | None = None, timeout_s: float = 60.0) -> list[Check]:
    """Every check, in table order (connects to ``address`` or $RAY_ADDRESS, else a local Ray)."""
    connect(address)
    checks = cluster_checks(address)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    checks += probe_nodes(storage, uri, [data] if data else None, versions=True, timeout_s=timeout_s)
    if not uri:
        checks.append(Check("tracking", "cluster", WARN if len(alive_nodes()) > 1 else OK,
                            "no --tracking-uri: sweeps default to SQLite in the sweep folder (covered by the storage "
                            "check); a cluster wants an `mlflow server` (docs/cluster.md)"))
    return checks + tracking_notes(uri, len(alive_nodes()))


def doctor_main(address: str | None, storage: str | None, tracking_uri: str | None, data: str | None,
                timeout_s: float = 60.0) -> int:
    """``liverlab doctor``: print the table; exit code 1 on any FAIL."""
    checks = run_doctor(address, storage, tracking_uri, data, timeout_s)
    render(checks)
    return 1 if any(c.verdict == FAIL for c in checks) else 0
