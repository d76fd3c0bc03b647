"""User-facing errors: one clear message, no traceback, from the CLI."""


class MCTError(Exception):
    """An error the user can act on (bad input, missing file, diverged run)."""


class ConfigError(MCTError):
    """A configuration value is unknown, of the wrong type or out of range."""


class CheckpointError(MCTError):
    """A checkpoint is missing, truncated, refused, or of another architecture."""


class DataError(MCTError):
    """Input data (images, prompts, reference statistics) is unusable."""


class DownloadError(MCTError):
    """A download failed, was cut off, or its checksum did not match."""


class TrainingDiverged(MCTError):
    """NaN or inf appeared during training; the last good checkpoint is kept."""


class TimeLimitReached(MCTError):
    """A run stopped before its time limit with a checkpoint saved: rerunning the same command
    resumes it. The CLI exits with :data:`TIME_LIMIT_EXIT` so that a workflow can tell this
    from a failure (and resubmit)."""


TIME_LIMIT_EXIT = 75  # EX_TEMPFAIL (sysexits.h): try again later
