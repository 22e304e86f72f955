"""The one error type of the data layer."""


class DataError(ValueError):
    """The data cannot be loaded; the one-line message says what to change."""
