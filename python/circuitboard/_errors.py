"""Warning class shared by every circuitboard module (tests turn it into an error)."""


class CircuitboardWarning(UserWarning):
    """Something worked, but probably not the way you meant; the message says how to fix it."""
