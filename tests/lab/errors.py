"""The one exception of the lab helpers, so that callers can skip on it."""


class LabError(RuntimeError):
    """A namespace, device, process or firmware file could not be set up."""
