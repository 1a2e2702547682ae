"""docs/commands.md, generated from the argparse definitions of the ``liverlab`` command.

Each command's section is its parser: the one-line help, a usage line, the
``description`` and ``epilog`` prose, and a table of its arguments. Nothing
in docs/commands.md is written by hand, so it cannot drift from
``liverlab COMMAND --help``; tests/test_cli_docs.py fails when the file is
stale. Regenerate with::

    python -m liverlab.cli_docs --write

The usage line is built here rather than by argparse, whose line wrapping
depends on the terminal width and whose format changes between Python
versions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
REGENERATE = "python -m liverlab.cli_docs --write"

_INTRO = """# liverlab commands

Generated from the argparse definitions (`liverlab/cli.py` and each layer's `commands.py`) by
`{regenerate}`; do not edit by hand. `liverlab COMMAND --help` prints the same text.

User errors (a bad key, a corrupt file, a missing dataset) print one line naming the file and the key or
case, and exit with code 2, without a traceback.
"""


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every leaf command, depth first, in definition order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                yield from _subcommands(sub)
            else:
                yield name, helps.get(name, ""), sub


def _arg_name(action: argparse.Action) -> str:
    """'--split {auto,all}', '--set KEY=VALUE', 'SPACE', '--json'."""
    if not action.option_strings:
        return str(action.metavar or action.dest)
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        return flag
    if action.metavar is not None:
        return f"{flag} {action.metavar}"
    if action.choices is not None:
        return f"{flag} {{{','.join(map(str, action.choices))}}}"
    return f"{flag} {action.dest.upper()}"


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    parts = [prog]
    for a in parser._actions:
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
            continue
        name = _arg_name(a)
        if not a.option_strings:
            parts.append(f"[{name} ...]" if a.nargs in ("*", "?") else name)
        else:
            parts.append(name if a.required else f"[{name}]")
    return " ".join(parts)


def _prose(text: str) -> str:
    """Help text as Markdown: one line; outside `code`, < and > escaped (GitHub would take <name> for a tag)."""
    parts = " ".join(text.split()).split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _cell(text: str) -> str:
    return _prose(text).replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""  # argparse %-formats help strings (%(default)s, %%): so does the page
    return text % dict(vars(action), prog=prog) if "%" in text else text


def _default(action: argparse.Action) -> str:
    d = action.default
    if not action.option_strings or action.required or d is None or d is False or d == [] or d == argparse.SUPPRESS:
        return ""  # `is`: a default of 0 is a default, not "none"
    return f"`{action.default}`"


def command_section(prog: str, help_line: str, parser: argparse.ArgumentParser) -> list[str]:
    """One command: heading, help line, usage, description, argument table, epilog."""
    L = [f"## `{prog}`", "", f"*{help_line}*" if help_line else "", "", "```", _usage(prog, parser), "```", ""]
    if parser.description:
        L += [_prose(parser.description), ""]
    rows = [a for a in parser._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
    if rows:
        L += ["| argument | default | meaning |", "|---|---|---|"]
        for a in rows:
            required = " (required)" if a.option_strings and a.required else ""
            L.append(f"| `{_cell(_arg_name(a))}`{required} | {_default(a)} | {_cell(_help(a, prog))} |")
        L.append("")
    if parser.epilog:
        L += [_prose(parser.epilog), ""]
    return L


def commands_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole of docs/commands.md for ``parser`` (default: the ``liverlab`` parser)."""
    if parser is None:
        from liverlab.cli import build_parser

        parser = build_parser()
    leaves = list(_subcommands(parser))
    L = [_INTRO.format(regenerate=REGENERATE)]
    if parser.description:
        L += [_prose(parser.description), ""]
    if parser.epilog:
        L += [_prose(parser.epilog), ""]
    L += ["| command | what it does |", "|---|---|"]
    L += [f"| [`{sub.prog}`](#{sub.prog.replace(' ', '-')}) | {_cell(help_line)} |" for _, help_line, sub in leaves]
    L.append("")
    for _, help_line, sub in leaves:
        L += command_section(sub.prog, help_line, sub)
    return "\n".join(L).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m liverlab.cli_docs", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(DOC.parent.parent)}")
    ap.add_argument("--check", action="store_true", help="exit 1 when the file differs from what is generated")
    args = ap.parse_args(argv)
    text = commands_markdown()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    if args.write:
        from liverlab.data.atomic import write_bytes_atomic

        write_bytes_atomic(DOC, text.encode())
        print(f"wrote {DOC}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
