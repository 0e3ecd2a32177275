"""The few exception classes livevsr raises for bad input; everything else is a bug."""


class LiveVSRError(Exception):
    """Base class: a clear, user-facing error."""


class ConfigError(LiveVSRError):
    """The configuration file or a value in it is wrong; the message names the dotted key."""


class IngestError(LiveVSRError):
    """A publisher or source sent something we refuse (bad key, bad codec, protocol violation)."""


class EngineError(LiveVSRError):
    """An upscaling engine cannot start or failed while running."""


class WeightsError(EngineError):
    """A weights file is missing, unreadable, or its keys/shapes do not match the model."""
