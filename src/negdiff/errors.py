"""One exception type for every mistake a user can make.

The CLI turns a :class:`NegdiffError` into a one-line message and a non-zero exit code, with no
traceback; anything else is a bug in negdiff and keeps its traceback so it can be reported.
"""

from __future__ import annotations


class NegdiffError(Exception):
    """A problem with the user's input or environment (bad model id, missing data, bad option)."""
