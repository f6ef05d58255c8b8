"""Warning class shared by every circuitboard module (tests turn it into an error)."""


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
