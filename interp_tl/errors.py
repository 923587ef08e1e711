"""Typed errors: every error a user can cause is one of these, with a one-line message.

The CLI prints ``interp-tl: error: <message>`` and exits non-zero for any of them; library
users catch :class:`InterpTLError` (or the standard base class each one also derives from).
"""


class InterpTLError(Exception):
    """Base class of interp_tl's errors; str(e) is one line meant for the user."""


class BadInputError(InterpTLError, ValueError):
    """Input that cannot be analysed (shapes, counts, zero-norm rows, ranges)."""


class UnknownLanguageError(BadInputError):
    """A language code that the parallel problem set does not have."""


class LayerRangeError(BadInputError):
    """A layer index outside the model's ``[0, n_layers)``."""


class ModelNotAvailableError(InterpTLError, RuntimeError):
    """A model name that is unknown, or whose weights cannot be loaded here."""


class OutputPathError(InterpTLError, OSError):
    """An output location that cannot be created or written."""


class ProvenanceMismatchError(InterpTLError, ValueError):
    """A saved file (goldens, activations) that does not match what it is compared with."""
