"""Ray Serve LLM's node initialization, skipped when there is nothing to download.

Before each replica's engine starts, Ray Serve LLM 2.60 runs `initialize_node` (`vllm_engine.py` `start`): one
Ray task per node of the replica's placement group, which calls `download_model_files`. That function only
downloads s3://, gs:// or mirror-configured models and returns any other model id unchanged
(`download_utils.py`). tokenplane's sources are local or PVC paths, Hugging Face ids (vLLM downloads those
itself) or Azure Blob directories (downloaded by `tokenplane_serving.blob`'s callback, which keeps the task).
Without a Blob source the task does nothing, yet costs a worker process start and Ray Serve LLM's imports
inside the replica's cold start (about 10 s on a 2-core machine).
"""

from __future__ import annotations

import os

from tokenplane_serving.ray_internals import CallbackBase

__all__ = ["SkipNodeInitCallback"]


class SkipNodeInitCallback(CallbackBase):
    """Node-initialization callback for replicas whose sources need no download: skips Ray's per-node task."""

    async def on_before_node_init(self) -> None:
        """Turn Ray's node initialization off, keeping the one side effect it has on every node."""
        import torch

        # download_model_files creates this first: torch cannot create its kernels directory without the parent.
        os.makedirs(os.path.join(os.path.dirname(torch.hub.get_dir()), "kernels"), exist_ok=True)
        self.ctx.run_init_node = False
