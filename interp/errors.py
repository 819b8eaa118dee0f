"""Every failure a user can cause has its own exception class, and each message names the fix.

All of them derive from :class:`InterpError`, so a script can catch the family, and from the
built-in class a caller would expect (``ValueError`` for bad arguments, ``LookupError`` for
names that do not exist, ``ImportError`` for missing packages), so plain ``except ValueError``
keeps working.  Checks run before any tensor work starts: a user never sees a traceback from
inside torch for an input we could have validated.
"""

from __future__ import annotations


class InterpError(Exception):
    """Base class of every error raised on purpose by interp."""


class ModelNotFoundError(InterpError, LookupError):
    """A model name is neither a local directory, a cached id, nor reachable on the hub."""


class DefaultModelMissingError(InterpError, ImportError):
    """The package that ships the embedded default model is not installed."""


class UnsupportedArchitectureError(InterpError, ValueError):
    """The model's architecture has no adapter."""


class EngineError(InterpError, ValueError):
    """An engine name is unknown or an engine cannot do what was asked."""


class DeviceError(InterpError, ValueError):
    """A device or dtype is unknown or not available on this machine."""


class SiteError(InterpError, KeyError):
    """A site name is unknown or used in a way it does not support."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SettingError(InterpError, ValueError):
    """A setting (a function argument or CLI flag) has a value that is not allowed."""


class LayerIndexError(InterpError, IndexError):
    """A layer (or head, neuron, position) index is out of range."""


class PromptError(InterpError, ValueError):
    """A prompt is empty, too long for the model, or otherwise unusable."""


class SpanNotFoundError(InterpError, ValueError):
    """A substring (a subject, a context) is not in the prompt."""


class InterventionError(InterpError, ValueError):
    """An edit of an intervention plan is malformed."""


class CacheShardError(InterpError, ValueError):
    """A shard of an on-disk activation cache is corrupt or does not match its manifest."""


class ResultMissingError(InterpError, FileNotFoundError):
    """A figure or report needs a result file that has not been computed yet."""


class DatasetError(InterpError, ValueError):
    """A dataset file is missing, of unknown format, or has no usable rows."""


class CheckpointMismatchError(InterpError, ValueError):
    """Two checkpoints (or their neuron maps) do not have the same shapes, so neurons do not correspond."""


class RemoteConfigError(InterpError, ValueError):
    """A remote run (NDIF) is asked for without what it needs: an API key, a hosted model id."""


class RemoteUnavailableError(InterpError, ConnectionError):
    """The NDIF host cannot be reached, or does not serve the model."""


class RemoteRequestError(InterpError, RuntimeError):
    """A remote request still failed after its retries."""


class InterpWarning(UserWarning):
    """Base class of the warnings interp issues about a result a user may misread."""


class UnknownTargetWarning(InterpWarning):
    """The tracked target is not what the model predicts (not its top-1, or p_clean is tiny):
    the effects measured on it are effects on a token the model does not answer."""



class PositionZeroWarning(InterpWarning):
    """A set of blocked source positions holds position 0 of a prompt without a BOS token:
    that token is the attention sink, and blocking it inflates the knockout's effect."""
