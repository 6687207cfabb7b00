"""Error types whose messages name the offending thing and the fix.

Tools catch ``CziiError`` and print its message without a traceback.
"""


class CziiError(Exception):
    """Base class: a user-facing problem with a message that says what to do."""


class DataError(CziiError):
    """Missing or malformed data: paths, zarr stores, picks, volumes."""


class IncompleteDataError(DataError):
    """A tomogram whose store lacks chunks (an interrupted copy): that run is skipped, the others go on."""


class ConfigError(CziiError):
    """Unknown or invalid configuration keys and values."""


class CheckpointError(CziiError):
    """A checkpoint that is missing, incompatible or would be clobbered."""


class SubmissionError(CziiError):
    """A submission file that is malformed."""


class PredictionError(CziiError):
    """Prediction ran but produced nothing usable (every run failed): nothing was written."""
