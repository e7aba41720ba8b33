"""Errors a user can cause. The CLI (and later the API) turn these into clear messages."""


class TunesmithError(Exception):
    """Base of every error caused by input, not by a bug."""


class UnknownModelError(TunesmithError):
    pass


class DataError(TunesmithError):
    """A data file cannot be used; ``report`` carries every problem found."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class TemplateError(TunesmithError):
    pass
