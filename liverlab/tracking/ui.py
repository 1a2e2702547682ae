"""Where to look at a run in the MLflow UI: the command and the direct runs address.

MLflow 3.17's UI opens every experiment in its GenAI view (Overview, Traces,
Sessions). That view follows a UI-wide switch, "GenAI" / "Model training" at
the top of the sidebar, kept per browser (local storage ``mlflow.workflowType``,
default ``genai``); the ``mlflow.experimentKind`` experiment tag is ignored
(its lookup is behind a feature flag that is always on in 3.17). The switch
can be set in the address: ``?workflowType=machine_learning`` opens the
"Model training" side with the experiment's runs, nested sweeps included.
liverlab prints that address after every ``train`` and ``sweep``.
"""

from __future__ import annotations

from typing import Any

UI_PORT = 5000  # `mlflow ui` / `mlflow server` default
RUNS_VIEW = "workflowType=machine_learning"


def runs_address(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the "Model training" view of the MLflow UI at ``base_url``."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}"


def ui_hint(uri: str, experiment_id: str | None) -> str:
    """What ``liverlab train`` / ``liverlab sweep`` print: how to open their runs."""
    if uri.startswith(("http://", "https://")):  # a server is running: the address is enough
        return f"MLflow runs: {runs_address(uri, experiment_id)}" if experiment_id else f"MLflow: {uri}"
    line = f"MLflow: mlflow ui --backend-store-uri {uri}"
    if experiment_id:
        line += f"\n  then open {runs_address(f'http://127.0.0.1:{UI_PORT}', experiment_id)}"
    return line


def tracker_experiment_id(tracker: Any) -> str | None:
    """The experiment of an ``MlflowTracker``'s run (None for a NullTracker)."""
    run_id = getattr(tracker, "run_id", None)
    if run_id is None:
        return None
    return str(tracker.client.get_run(run_id).info.experiment_id)
