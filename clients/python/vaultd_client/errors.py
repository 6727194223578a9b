"""Exceptions for the agent socket's gRPC status codes.

An exception carries the status code and vaultd's message (which names the
environment and secret, never a value). A value is never put in an exception's
message or repr: the client only ever holds one on success.
"""

from __future__ import annotations

import grpc


class VaultError(Exception):
    """A call failed. ``code`` is the gRPC status code, ``details`` vaultd's
    message (or grpc's, when vaultd was not reached)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.details} ({self.code.name})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, details={self.details!r})"


class NotFound(VaultError):
    """NOT_FOUND: no such secret, or this caller was not granted it (vaultd gives
    both the same answer)."""


class Sealed(VaultError):
    """FAILED_PRECONDITION: the vault is sealed or not initialized."""


class Denied(VaultError):
    """PERMISSION_DENIED: this caller may not use the socket; or UNAUTHENTICATED:
    vaultd refused the bearer token (unknown, expired, revoked, used up, or bound
    to another uid)."""


class RateLimited(VaultError):
    """RESOURCE_EXHAUSTED: too many reads (or too many bad tokens). ``retry_after``
    is vaultd's ``retry-after-ms`` hint in seconds, or None."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after: float | None = None) -> None:
        super().__init__(code, details)
        self.retry_after = retry_after


class InvalidArgument(VaultError):
    """INVALID_ARGUMENT: a malformed environment or secret name."""


class Unavailable(VaultError):
    """UNAVAILABLE or DEADLINE_EXCEEDED: vaultd is not running, the socket path is
    wrong, or it did not answer in time."""


_BY_CODE: dict[grpc.StatusCode, type[VaultError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Sealed,
    grpc.StatusCode.PERMISSION_DENIED: Denied,
    grpc.StatusCode.UNAUTHENTICATED: Denied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def _retry_after(err: grpc.Call) -> float | None:
    for key, value in err.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return int(value) / 1000
            except (TypeError, ValueError):
                return None
    return None


def from_rpc_error(err: grpc.RpcError) -> VaultError:
    """The exception for a failed call."""
    if not isinstance(err, grpc.Call):
        return VaultError(grpc.StatusCode.UNKNOWN, str(type(err).__name__))
    code = err.code()
    details = err.details() or code.name.lower().replace("_", " ")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(code, details, _retry_after(err))
    return _BY_CODE.get(code, VaultError)(code, details)
