"""Errors a user can cause. The CLI (and later the API) turn these into clear messages."""


class TunesmithError(Exception):
    """Base of every error caused by input, not by a bug. ``param`` and ``code`` go into the API's
    error envelope (the request field at fault, and OpenAI's code for the error, where it has one)."""

    param: str | None = None
    code: str | None = None


class UnknownModelError(TunesmithError):
    pass


class DataError(TunesmithError):
    """A data file cannot be used; ``report`` carries every problem found."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class TemplateError(TunesmithError):
    pass
