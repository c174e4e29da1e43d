"""The OpenAI Batch API: files, batches, and the durable queue that runs them at low priority.

- `schema`: the OpenAI shapes and the input file's line rules (pure).
- `store`: where files, batch records and per-request results live (a local directory, or Azure Blob).
- `jobs`: the batch lifecycle (create, validate and fan out, run one request, finalize, cancel), written
  so that a request run twice writes its result once (at-least-once delivery, idempotent result writes).
- `consumer`: the Ray Serve async-inference deployment (`ray.serve.task_consumer`, Celery on Redis) that
  runs the queued requests through the LLM app at a lower vLLM priority than interactive traffic.
- `tokenplane_serving.features.batch`: the HTTP endpoints, in the replica's feature layer.
"""
