"""Error types that the CLI turns into clean messages (exit code 2) instead of tracebacks."""


class UserError(Exception):
    """A mistake in the user's input: names the file, the key and what is allowed."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class TierAccessError(PermissionError):
    """Raised when code asks a tier handle for something the tier does not grant."""


class IncompatibleError(UserError):
    """A combination of components that cannot run together (decided before any training)."""


class DivergedError(ArithmeticError):
    """Training produced a non-finite loss, update or aggregate: the run's numbers would be meaningless."""
