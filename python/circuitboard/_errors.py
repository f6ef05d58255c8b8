"""Warning and error classes shared by every circuitboard module."""


class CircuitboardWarning(UserWarning):
    """Something worked, but probably not the way you meant; the message says how to fix it.

    Every warning circuitboard gives is of this class, so one filter silences or escalates
    them all.

    Examples
    --------
    >>> import warnings
    >>> import circuitboard as cb
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", cb.CircuitboardWarning)  # make them errors
    ...     issubclass(cb.CircuitboardWarning, UserWarning)
    True
    """


class CircuitboardFileError(ValueError):
    """A file given to a ``cb.load_*`` is not the circuitboard file it reads: damaged, empty,
    truncated, of another kind, or something else entirely. The message says what was found
    and which call writes the right file. Nothing in such a file is ever executed or unpickled.

    Examples
    --------
    >>> import circuitboard as cb
    >>> issubclass(cb.CircuitboardFileError, ValueError)
    True
    """


class MissingCircuitboardFile(CircuitboardFileError, FileNotFoundError):
    """No file at the path a ``cb.load_*`` was given (also a :class:`FileNotFoundError`)."""
