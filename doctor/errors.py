"""The one family of errors doctor raises on purpose.

Every message says what was expected, what was found and what to do next, so
the CLI can print it as a single line and exit with status 2.
"""


class DoctorError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""


class UsageError(DoctorError):
    """The caller asked for something that cannot work (bad path, bad option)."""


class LogFormatError(DoctorError):
    """A file is not a doctor run log, or is from a newer schema than this reader."""


class ThresholdError(UsageError):
    """A threshold override names an unknown rule or field, or has the wrong type."""


class NonFiniteError(DoctorError, FloatingPointError):
    """Raised into the training loop by ``doctor.watch(..., on_nonfinite="raise")`` once the log is flushed."""
