"""Error type shared by the optimizer, schedule and averaging modules."""


class OptimError(ValueError):
    """Bad optimizer/schedule/averaging input; the message names the value and the fix."""
