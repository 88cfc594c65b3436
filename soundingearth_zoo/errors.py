"""Errors that mean "the user's input is wrong", which the command line reports in one line with exit code 2."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a missing path, an unreadable file, an unknown model name, mismatched files."""
