"""The library's own errors: everything steerlab raises because of what it was given (arguments,
files, specs) derives from :class:`SteerlabError`. The CLI turns exactly these into one-line
``error: ...`` messages; any other exception is a bug and keeps its traceback.

The subclasses also derive from the built-in exception a caller would expect (``ValueError`` for a
bad argument, ``KeyError`` for an unknown name, ...), so ``except ValueError`` keeps working."""

from __future__ import annotations


class SteerlabError(Exception):
    """Base class of every error caused by the caller's input, files or settings."""


class InputError(SteerlabError, ValueError):
    """An argument or setting that cannot be used; the message says what to give instead."""


class OutOfRangeError(InputError, IndexError):
    """An index (a layer, a token position) outside what exists."""


class LayerError(OutOfRangeError):
    """A layer index outside the model's blocks."""


class UnknownNameError(SteerlabError, KeyError):
    """A name (vector, concept, task, model) that is not known."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class MissingFileError(SteerlabError, FileNotFoundError):
    """A file or folder the caller named does not exist."""
