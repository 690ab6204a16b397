"""The errors occamgd raises for input it refuses.

Every refusal of a value, a type or a file that occamgd checks is one of these, with a message
naming the value and what is accepted. They subclass the built-in exception a caller would
expect (``ValueError``, ``TypeError``, ``FileNotFoundError``), so ``except ValueError`` keeps
working; the command line reads :class:`OccamgdError` as "bad input" (exit code 2) and any other
exception as a fault of its own (exit code 1, with the traceback).
"""

from __future__ import annotations


class OccamgdError(Exception):
    """Input occamgd refuses: the message names the value and what is accepted."""


class InvalidValueError(OccamgdError, ValueError):
    """A value outside what is accepted (a rate of 1.5, a damaged file, a column that is not there)."""


class InvalidTypeError(OccamgdError, TypeError):
    """A value of a type that is not accepted (a string where a model is expected)."""


class MissingFileError(OccamgdError, FileNotFoundError):
    """A file or directory that was named, or looked for, and is not there."""


class NotPrunedWarning(UserWarning):
    """A run ended without pruning anything: the message names the controller's phase and what to change."""
