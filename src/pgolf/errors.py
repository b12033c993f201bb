"""The user-facing error base: what the CLI prints as one line. Anything else is a bug and
keeps its traceback."""


class PgolfError(Exception):
    """A problem with the user's input, files or environment; the message names the fix."""


class TrainingError(PgolfError, RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class RunFolderError(PgolfError, ValueError):
    """A run folder or artifact that a command cannot read (one line naming the file)."""


class BenchError(PgolfError, ValueError):
    """A benchmark request that cannot run as given; the message names the fix."""
