"""PlanError: why a request cannot be planned, as a closed reason code plus a message a human can act on."""

from enum import StrEnum

__all__ = ["PlanError", "PlanErrorReason"]


class PlanErrorReason(StrEnum):
    """Closed vocabulary of planning failures; the operator maps each to a condition reason."""

    DOES_NOT_FIT = "DoesNotFit"
    UNKNOWN_MODEL = "UnknownModel"
    UNKNOWN_VM_SIZE = "UnknownVmSize"
    CONTEXT_TOO_LONG = "ContextTooLong"
    INVALID_MODEL_CONFIG = "InvalidModelConfig"
    INVALID_WORKLOAD = "InvalidWorkload"


class PlanError(ValueError):
    """A request the planner cannot satisfy.

    Attributes:
        reason: The machine-readable reason.
        message: What is wrong and what to change, for a human.
        field: The spec's field path to change (`spec.scaling.maxReplicas`), when one field is the one to fix.
    """

    def __init__(self, reason: PlanErrorReason, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{reason.value}: {message}" if field is None else f"{reason.value}: {field}: {message}")
        self.reason = reason
        self.message = message
        self.field = field
