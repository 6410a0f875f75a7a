"""Errors raised by the encrypted transports (secure aggregation and homomorphic encryption)."""

from bench.api.errors import UserError


class SecAggAbortError(UserError):
    """Too many clients dropped for the survivors to reconstruct the secrets the server needs.

    The real protocol aborts the round in this case. It is a ``UserError`` because it follows from
    the scenario's settings (dropout rate against threshold), and the CLI reports it without a traceback.
    """


class IndividualUpdatesHiddenError(PermissionError):
    """Someone asked an encrypted transport for one client's plain update; the server cannot see it."""


class EncodingRangeError(RuntimeError):
    """A coordinate fell outside the fixed-point range that a defense declared its updates stay in
    (``Defense.coordinate_bound``); clipping it would silently change that defense's guarantee."""
