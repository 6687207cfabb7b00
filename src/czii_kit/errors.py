"""Error types whose messages name the offending thing and the fix.

Tools catch ``CziiError`` and print its message without a traceback.
"""


def first_line(text: object, limit: int = 200) -> str:
    """The first non-empty line of a library's error text, cut to ``limit`` characters: enough to name the cause in
    a one-line message ("" when there is none)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")[:limit]


def first_few(items, most: int = 5, sep: str = ", ") -> str:
    """The first ``most`` of ``items`` joined by ``sep``, and how many more: a message names a few, not thousands."""
    items = [str(item) for item in items]
    return sep.join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


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
