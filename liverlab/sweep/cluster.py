"""Joining Ray, and the nodes it reports: shared by ``liverlab sweep`` and ``liverlab doctor``."""

from __future__ import annotations

import os
from typing import Any

import ray

from liverlab.errors import LiverlabError
from liverlab.verbosity import ray_logging_level


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS), else start a local Ray; reuse one already up."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=ray_logging_level())
        except ConnectionError as err:  # Ray's message does not say that a missing token is the usual cause
            mode = os.environ.get("RAY_AUTH_MODE", "unset")
            raise LiverlabError(
                f"cannot connect to the Ray cluster at {address}: {err}. If the cluster was started with "
                f"`ray start` (token authentication is on by default), set RAY_AUTH_MODE=token (now: {mode}) and "
                "give this machine the cluster's token (~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN); "
                "see docs/cluster.md"
            ) from None
    else:  # never a bare ray.init(): it may attach to a cluster started elsewhere
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=ray_logging_level())  # no "Started a local Ray instance" unless --verbose


def is_head(node: dict[str, Any]) -> bool:
    """Whether a ``ray.nodes()`` entry is the head node."""
    return "node:__internal_head__" in node.get("Resources", {})


def alive_nodes() -> list[dict[str, Any]]:
    """Alive nodes, the head first."""
    return sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: (not is_head(n), n["NodeID"]))


def node_name(node: dict[str, Any]) -> str:
    """``node 1a2b3c4d (10.0.0.2, head)``: how the doctor names a node."""
    head = ", head" if is_head(node) else ""
    return f"node {node['NodeID'][:8]} ({node.get('NodeManagerAddress', '?')}{head})"
