"""docs/commands.md is generated from the argparse definitions and must be current; the README's one-line
command table points into it."""

from __future__ import annotations

import argparse
import re

from conftest import REPO

from liverlab.cli_docs import REGENERATE, command_section, commands_markdown


def test_docs_commands_md_is_current() -> None:
    current = (REPO / "docs" / "commands.md").read_text()
    assert current == commands_markdown(), f"docs/commands.md is stale: run `{REGENERATE}` and commit it"


def test_every_command_has_its_prose_and_options() -> None:
    text = commands_markdown()
    for command in ("sweep", "train", "synthesize", "evaluate", "report", "doctor", "data phantoms",
                    "data import-chaos", "data import-nifti", "data split", "data inspect", "export nnunet",
                    "show-config", "validate"):
        section = text.split(f"## `liverlab {command}`\n")[1].split("\n## ")[0]
        prose = [line for line in section.splitlines() if line and not line.startswith(("|", "*", "`"))]
        assert prose, f"liverlab {command} has no description"
    # The long explanations that were README rows live on in the commands' description / epilog.
    for phrase in ("the predictions are scored exactly as given", "`unseen` (every patient it did not see)",
                   "`kill -9` of the driver or a full disk", "all patients are written or none",
                   "An existing dataset id is replaced only with --force", "`n_outliers`",
                   "the seeds needed for the paper's +1.17 IoU points"):
        assert phrase in text, phrase


def test_section_of_a_parser() -> None:
    p = argparse.ArgumentParser(prog="tool go", description="Does  a\nthing <fast>.", epilog="More `<x>`.")
    p.add_argument("src", help="input")
    p.add_argument("--n", type=int, default=0, help="count (default %(default)s, 100%%)")
    p.add_argument("--mode", choices=["a", "b"], required=True, help="a | b")
    p.add_argument("--flag", action="store_true", help="on")
    assert command_section("tool go", "one line", p) == [
        "## `tool go`", "", "*one line*", "", "```", "tool go src [--n N] --mode {a,b} [--flag]", "```", "",
        "Does a thing &lt;fast&gt;.", "",
        "| argument | default | meaning |", "|---|---|---|",
        "| `src` |  | input |",
        "| `--n N` | `0` | count (default 0, 100%) |",
        "| `--mode {a,b}` (required) |  | a \\| b |",
        "| `--flag` |  | on |", "",
        "More `<x>`.", "",
    ]


def test_readme_command_table_is_one_line_per_command_linking_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Commands\n")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| [")]
    assert len(rows) >= 12
    docs = (REPO / "docs" / "commands.md").read_text()
    anchors = {"liverlab-" + m.replace(" ", "-") for m in re.findall(r"^## `liverlab ([^`]+)`$", docs, re.M)}
    for row in rows:
        what = row.rsplit("|", 2)[1].strip()
        assert len(what.split()) <= 15, row  # a dozen words, not a paragraph
        for anchor in re.findall(r"\(docs/commands\.md#([\w-]+)\)", row):
            assert anchor in anchors, anchor
