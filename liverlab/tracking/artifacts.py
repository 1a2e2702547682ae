"""Run artifacts: list and fetch files, straight from disk when the artifact store is local.

A local (``file:``) artifact store is read directly: ``MlflowClient.download_artifacts``
costs a store round trip per call, which adds up over thousands of runs.
Remote stores (S3, a tracking server's proxy) go through the client.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import polars as pl

from liverlab.tracking.client import client_for, retry_locked


def local_dir(artifact_uri: str | None) -> Path | None:
    """The folder of a file: (or plain path) artifact URI, else None (remote store)."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def _artifact_uri(uri: str, run_id: str, runs: pl.DataFrame | None = None) -> str | None:
    if runs is not None and "artifact_uri" in runs.columns:
        hit = runs.filter(pl.col("run_id") == run_id)
        if hit.height:
            return hit["artifact_uri"][0]
    return retry_locked(client_for(uri).get_run, run_id).info.artifact_uri


def list_artifacts(uri: str, run_id: str, path: str = "", runs: pl.DataFrame | None = None) -> list[str]:
    """Relative paths of the files directly under ``path`` in a run's artifacts."""
    local = local_dir(_artifact_uri(uri, run_id, runs))
    if local is not None:
        folder = local / path
        return sorted(str(p.relative_to(local)) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    infos = retry_locked(client_for(uri).list_artifacts, run_id, path or None)
    return sorted(i.path for i in infos if not i.is_dir)


def download_artifact(
    uri: str, run_id: str, path: str, dst_dir: str | Path, runs: pl.DataFrame | None = None
) -> Path | None:
    """Copy one artifact file into ``dst_dir``; None when the run has no such artifact."""
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    local = local_dir(_artifact_uri(uri, run_id, runs))
    if local is not None:
        src = local / path
        if not src.is_file():
            return None
        return Path(shutil.copy2(src, dst / Path(path).name))
    try:
        return Path(retry_locked(client_for(uri).download_artifacts, run_id, path, str(dst)))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for "not found"
        text = str(exc).lower()
        if "not found" in text or "no such file" in text or "does not exist" in text:
            return None
        raise
