"""Quiet by default: the libraries' own chatter is off unless ``liverlab --verbose``.

Without ``--verbose`` a user sees liverlab's progress lines and tables, its
warnings and errors, and the libraries' warnings and errors, but not:

* MLflow's INFO lines ("Creating initial MLflow database tables...",
  "Updating database tables", alembic's "Context impl ...") and its
  "Downloading artifacts" progress bars (the report step of ``liverlab sweep``);
* Ray's INFO lines ("Started a local Ray instance.") and Ray Tune's own
  experiment banner ("Configuration for experiment", "View detailed results
  here", the TensorBoard hint): the sweep prints its own live table.

Everything is set through environment variables, *before* the libraries are
imported, so Ray trial workers (which inherit the environment) are quiet too;
a variable the user set already is left as it is. Nothing here imports
mlflow or ray.
"""

from __future__ import annotations

import logging
import os

#: Environment defaults for quiet mode (the user's own values win).
QUIET_ENV = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # mlflow's loggers (and alembic's, which mlflow caps at WARNING anyway)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" bars
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's legacy reporter, silent at verbose=0 (the new one prints a banner)
}
_LOGGERS = ("mlflow", "alembic")

_verbose: bool | None = None  # None: never configured (library calls from Python leave the defaults alone)


def configure(verbose: bool) -> None:
    """Quiet the libraries (``verbose=False``) or leave them as they are; call before importing them."""
    global _verbose
    _verbose = verbose
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in _LOGGERS:  # in case one was imported already (its import set the level from the variable)
        logging.getLogger(name).setLevel(logging.WARNING)


def ray_logging_level() -> int:
    """``ray.init(logging_level=...)``: WARNING in quiet mode, Ray's default (INFO) otherwise."""
    return logging.WARNING if _verbose is False else logging.INFO
