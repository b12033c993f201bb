"""Error type shared by the optimizer, schedule and averaging modules."""

from pgolf.errors import PgolfError


class OptimError(PgolfError, ValueError):
    """Bad optimizer/schedule/averaging input; the message names the value and the fix."""
