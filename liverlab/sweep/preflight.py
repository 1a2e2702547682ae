"""Before a sweep starts trials: can this Ray cluster run them at all?

``preflight`` refuses resource requests no node can meet (a GPU request on a
cluster without GPUs would pend forever). ``quick_check`` runs the cheap part
of ``liverlab doctor`` on a multi-node cluster (resources, storage, tracking
and the data seen from every node; no version probe) and raises on any FAIL,
before a trial fails minutes later on one node.
"""

from __future__ import annotations

import sys

import ray

from liverlab.errors import LiverlabError
from liverlab.sweep.cluster import alive_nodes
from liverlab.sweep.doctor import cluster_checks, probe_nodes, tracking_notes
from liverlab.sweep.doctor_table import FAIL, WARN, Check
from liverlab.sweep.space import LoadedSpace


def preflight(loaded: LoadedSpace) -> dict[str, float]:
    """Refuse trials the cluster can never place, instead of letting them pend forever."""
    res = loaded.space.resources
    total = ray.cluster_resources()
    gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    if res.gpu > 0 and gpus < res.gpu:
        raise LiverlabError(
            f"{loaded.path}: resources.gpu: trials ask for {res.gpu} GPU but the Ray cluster has {gpus:g}; "
            "set resources.gpu: 0 (or --set is not enough: edit the space) "
            "or connect to a cluster with GPUs (--address)"
        )
    per_node = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if res.cpu > per_node:
        raise LiverlabError(
            f"{loaded.path}: resources.cpu: trials ask for {res.cpu:g} CPUs but the largest node has {per_node:g}"
        )
    return {"CPU": cpus, "GPU": gpus}


def quick_check(storage: str, tracking_uri: str | None, data: list[str] | None = None,
                timeout_s: float = 60.0) -> list[Check]:
    """The sweep's preflight from every node: resources, storage (a shared folder or an object
    store, with each node's own credentials), tracking, and ``data`` folders with the driver's
    layout digest. Raises on any FAIL, naming the node.

    Skipped (returns []) on a single node, where the driver's disk is the
    nodes' disk. The version probe is left to ``liverlab doctor``.
    """
    if len(alive_nodes()) <= 1:
        return []
    checks = cluster_checks() + probe_nodes(storage, tracking_uri, data, versions=False, timeout_s=timeout_s)
    checks += tracking_notes(tracking_uri, len(alive_nodes()))
    fails = [c.line() for c in checks if c.verdict == FAIL]
    if fails:
        raise LiverlabError("the cluster is not ready for this sweep (run `liverlab doctor` for details): "
                            + "; ".join(fails))
    for c in checks:
        if c.verdict == WARN:
            print(f"liverlab: warning: {c.line()}", file=sys.stderr)
    return checks
