"""The one exception type for user errors.

A ``LiverlabError`` means the *input* is wrong (a config key, a file, a case),
not the code. The CLI prints its message on one line and exits with code 2,
without a traceback. Messages name the file and the key or case at fault.
"""

from __future__ import annotations


class LiverlabError(Exception):
    """Bad user input: a config, a search space, a data file. Exit code 2."""

    exit_code = 2
