"""The one exception family. The CLI turns any of these into one line and exit code 2."""

from __future__ import annotations


class AutoPromptError(Exception):
    """Base class: a problem the user can act on, with a message that says where."""


class TaskError(AutoPromptError):
    """A task file, data file or example is wrong (message names file and line)."""


class TemplateError(AutoPromptError):
    """A template does not follow the syntax or does not fit the model or data."""


class ModelError(AutoPromptError):
    """A model cannot be found, loaded or used as asked."""


class PromptFileError(AutoPromptError):
    """A prompt file is malformed, of another version, or made for another tokenizer."""


class InputTooLong(TemplateError):
    """An input with its prompt is longer than the model reads (a prompt with many demonstrations, say)."""
