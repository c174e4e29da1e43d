"""Desired state: what one InferenceDeployment should own (agent pool, RayService, Service, NetworkPolicy), pure."""
