"""The one base class of every error a user can cause and fix: a bad config value, flag, file,
checkpoint, export or workdir.

The command lines print such an error as one line naming the file, flag or field, and exit
with status 2 (f3_jax/cli.py); anything else is a bug and keeps its traceback. Each layer
defines its own subclasses (config.ConfigError, data.errors.DataError, ...); this module
imports nothing, so every layer can use it.
"""


class UserError(Exception):
    """An error the user can fix; the message names the file, flag or field."""


class UsageError(UserError):
    """A command line that cannot work: a missing or contradictory flag or argument."""


class ModelFileError(UserError):
    """A weights or config file (an export, an LLM's GGUF or safetensors) that is missing,
    truncated or corrupt; the message names the file."""
