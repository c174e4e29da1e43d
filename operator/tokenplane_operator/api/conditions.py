"""Closed vocabulary for status: condition types, reasons and phases."""

from enum import StrEnum

__all__ = ["ConditionType", "Phase", "Reason"]


class ConditionType(StrEnum):
    """Condition types an InferenceDeployment reports; `Ready` is the one `kubectl wait` and kstatus read."""

    VALIDATED = "Validated"  # the spec parsed, passed every rule, and fits the chosen hardware
    NODE_POOL_READY = "NodePoolReady"  # the AKS agent pool exists and finished provisioning (or is BYO)
    SERVING_READY = "ServingReady"  # the RayService serves and a real completion succeeded
    READY = "Ready"  # all of the above: the endpoint takes traffic
    RECONCILING = "Reconciling"  # kstatus: the operator is still working towards the spec
    STALLED = "Stalled"  # kstatus: progress stopped and needs a human (quota, invalid spec)
    # True when the region's vCPU quota cannot cover the pool's maxCount (abnormal-true, like Stalled):
    # the message names the family, region, needed and available vCPUs, and what the operator did.
    QUOTA_INSUFFICIENT = "QuotaInsufficient"
    # True when the replicas the autoscaling policy wants are running; False while more start (reason: why the
    # policy wants them) or cannot be placed (WaitingForCapacity); Unknown until the policy has reported.
    SCALED = "Scaled"


class Reason(StrEnum):
    """Why a condition has its status; PascalCase as in metav1.Condition."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"  # a field breaks a rule; the message names the field path
    DOES_NOT_FIT = "DoesNotFit"  # weights + KV cache exceed the hardware the spec asks for
    QUOTA_EXCEEDED = "QuotaExceeded"  # Azure refused for quota; the message names the family and region
    QUOTA_SUFFICIENT = "QuotaSufficient"  # the quota covers the pool's maxCount
    QUOTA_INSUFFICIENT = "QuotaInsufficient"  # it does not: the pool is bounded, or not created/grown
    QUOTA_UNKNOWN = "QuotaUnknown"  # the usage API could not be read (permissions, throttling, unknown size)
    SKU_NOT_AVAILABLE = "SkuNotAvailable"  # the VM size is not offered in the region or zone
    THROTTLED = "Throttled"  # Azure answered 429; retried after Retry-After
    CLOUD_ERROR = "CloudError"  # a transient Azure failure (5xx, capacity); retried with backoff
    PROVISIONING = "Provisioning"  # the agent pool is being created or updated
    REPLACING = "Replacing"  # a field AKS cannot change in place moved the deployment to a new pool
    PROVISIONING_FAILED = "ProvisioningFailed"  # the agent pool operation ended Failed
    BRING_YOUR_OWN = "BringYourOwn"  # nodes come from an existing pool selected by label
    LOCAL = "Local"  # a CPU run with no Azure involved
    UNSCHEDULABLE = "Unschedulable"  # worker pods cannot be placed (no node, no GPU)
    DEPLOYING = "Deploying"  # the RayService exists and the Serve application is starting
    SERVING = "Serving"  # the application answers
    SERVING_FAILED = "ServingFailed"  # the Serve application reported a failure
    WAITING_FOR_NODE_POOL = "WaitingForNodePool"
    WAITING_FOR_SERVING = "WaitingForServing"
    RECONCILED = "Reconciled"
    DELETING = "Deleting"
    # The autoscaling policy's decision reasons (tokenplane_serving.autoscale.REASONS), and its silence.
    QUEUE_DEPTH = "QueueDepth"
    LATENCY_BREACH = "LatencyBreach"
    IDLE = "Idle"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"  # replicas pending longer than a cold start: no nodes for them
    SCHEDULE = "Schedule"
    BATCH = "Batch"  # Batch API requests alone hold replicas (within spec.batch's budget)
    STEADY = "Steady"
    NOT_REPORTED = "NotReported"  # no decision scraped from the Serve controller (yet)


class Phase(StrEnum):
    """One word for humans in `kubectl get`; conditions carry the detail."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    DELETING = "Deleting"
