"""The ``liverlab`` command. Thin: parses arguments and delegates.

Each layer registers its own sub-commands through a ``register(subparsers)``
function in its ``commands`` module; those modules import nothing heavy at
import time (no torch, ray or mlflow) so that ``liverlab --help`` is instant.

User errors (``LiverlabError``) print one line and exit with code 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from liverlab import __version__
from liverlab.errors import LiverlabError

# Layers that contribute sub-commands, in the order they appear in --help.
_COMMAND_MODULES = (
    "liverlab.data.commands",
    "liverlab.train.commands",
    "liverlab.infer.commands",
    "liverlab.sweep.commands",
    "liverlab.report.commands",
    "liverlab.export.commands",
)


_VERBOSE_HELP = "show the libraries' own INFO lines and progress bars (MLflow, Ray); liverlab's are always shown"


def _show_config(args: argparse.Namespace) -> int:
    from liverlab.config import dump_config, load_config

    print(dump_config(load_config(args.file, args.set)), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from liverlab.config import load_config

    roots = [Path(p) for p in args.paths] or [Path("experiments"), Path("search_spaces")]
    files = sorted(f for r in roots for f in ([r] if r.is_file() else r.rglob("*.y*ml")))
    if not files:
        raise LiverlabError(f"no YAML files under {', '.join(map(str, roots))}")
    failures = 0
    for f in files:
        try:
            if "search_spaces" in f.parts or _is_search_space(f):
                from liverlab.sweep.space import load_space

                load_space(f)
            else:
                load_config(f)
            print(f"ok      {f}")
        except LiverlabError as err:
            failures += 1
            print(f"INVALID {err}")
    print(f"{len(files) - failures} valid, {failures} invalid")
    return 2 if failures else 0


def _is_search_space(path: Path) -> bool:
    from liverlab.config import read_yaml

    return "base" in read_yaml(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liverlab",
        description="Hyperparameter and ablation experiments for CT -> MRI liver synthesis.",
        epilog="first steps: `liverlab train experiments/tiny.yaml` (makes tiny phantoms, trains for seconds); "
        "`liverlab data phantoms --out data/phantoms` then `liverlab data inspect data/phantoms`; "
        "`liverlab sweep search_spaces/quickstart.yaml` (the main job, minutes). "
        "`liverlab COMMAND --help` for each command; docs/commands.md has them all.",
    )
    parser.add_argument("--version", action="version", version=f"liverlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("show-config", help="print a resolved experiment config",
                       description="Print the resolved experiment config: the file, its --set overrides and every "
                       "default, validated.")
    p.add_argument("file", help="experiment YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    p.set_defaults(func=_show_config)

    p = sub.add_parser("validate", help="check every YAML under experiments/ and search_spaces/",
                       description="Check every YAML under experiments/ and search_spaces/ (or the given files and "
                       "folders): experiments against the config schema, search spaces against the config paths; "
                       "exit code 2 when one is invalid.")
    p.add_argument("paths", nargs="*", help="files or folders (default: experiments search_spaces)")
    p.set_defaults(func=_validate)

    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # layer not built yet
                continue
            raise
        module.register(sub)
    _add_verbose(sub)  # also after the command: `liverlab train x.yaml --verbose`
    return parser


def _add_verbose(sub: argparse._SubParsersAction) -> None:
    """``--verbose`` on every (sub-)command; SUPPRESS keeps the top-level value when it is not given there."""
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_verbose(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from liverlab import verbosity

    verbosity.configure(args.verbose)  # before any command imports mlflow or ray
    try:
        return int(args.func(args) or 0)
    except LiverlabError as err:
        print(f"liverlab: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("liverlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
