"""tokenplane operator: InferenceDeployment -> AKS GPU node pool + KubeRay RayService (Ray Serve + vLLM)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
