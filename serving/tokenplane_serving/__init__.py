"""tokenplane serving: Ray Serve LLM + vLLM behind the `InferenceDeployment` contract."""
