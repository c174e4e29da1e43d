"""Domain errors: what went wrong, told in the operator's retry semantics rather than a vendor's.

Adapters convert vendor exceptions into these; the reconciler maps them to kopf (temporary with a
delay, or a slow retry plus a condition a human reads). The tree::

    TokenplaneError
    ├── TransientCloudError     retry soon: 429 (after Retry-After), 5xx, 409 conflicts, network,
    │                           capacity (AllocationFailed, ZonalAllocationFailed, Overconstrained*)
    ├── CloudRejectedError      retry slowly, a human must act: QuotaExceeded, SkuNotAvailable,
    │                           InvalidRequest (other 4xx, credentials, immutable fields)
    └── OperationFailedError    a long-running operation was accepted and then ended Failed
"""

from typing import Literal

__all__ = [
    "CloudRejectedError",
    "OperationFailedError",
    "RejectionReason",
    "TokenplaneError",
    "TransientCloudError",
    "is_quota_error",
]

RejectionReason = Literal["QuotaExceeded", "SkuNotAvailable", "InvalidRequest"]


class TokenplaneError(Exception):
    """Base of every error tokenplane raises on purpose."""


class TransientCloudError(TokenplaneError):
    """The cloud failed in a way that goes away by itself; retry.

    Attributes:
        retry_after_s: Seconds the cloud asked us to wait (Retry-After), or None for "use your backoff".
        code: The cloud's error code when it gave one (e.g. "ZonalAllocationFailed").
        status: The HTTP status, or None when no response arrived (network, TLS, timeout).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.code = code
        self.status = status

    @property
    def throttled(self) -> bool:
        """Whether the cloud rate-limited us (HTTP 429), as opposed to failing."""
        return self.status == 429


class CloudRejectedError(TokenplaneError):
    """The cloud refused the request and will keep refusing it until a human acts.

    Attributes:
        reason: QuotaExceeded, SkuNotAvailable or InvalidRequest.
        message: The cloud's own message; for quota it names the VM family quota and the region.
        code: The cloud's raw error code (e.g. "OperationNotAllowed" for a core-quota refusal).
    """

    def __init__(self, reason: RejectionReason, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: RejectionReason = reason
        self.message = message
        self.code = code


class OperationFailedError(TokenplaneError):
    """A long-running cloud operation ended Failed.

    Attributes:
        code: The operation's error code (e.g. "ReconcileVMSSAgentPoolFailed").
        message: The operation's error message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def is_quota_error(code: str | None, message: str | None) -> bool:
    """Whether an Azure error (a refused request, or a long-running operation that ended Failed) is about quota.

    AKS reports quota as `QuotaExceeded`, as `OperationNotAllowed` "... exceeding quota limits of Core", and
    in a failed operation as another code whose message carries the compute error ("... results in exceeding
    approved standardNCadsH100v5Family Cores quota").
    """
    text = (message or "").lower()
    return code == "QuotaExceeded" or ("quota" in text and "exceed" in text)
