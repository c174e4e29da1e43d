"""`tokenplane bench`: measure any OpenAI-compatible endpoint the way `vllm bench serve` does, and price it.

Modules: workload (prompts with real token counts, sessions, traces, arrivals), client (streaming timings),
runner (closed/open loop), stats (vLLM's metric names and definitions, goodput, saturation, Pareto frontier),
cost (the planner's catalog), compare (interleaved A/B and sweeps), plots (matplotlib), report, commands, cli.
Nothing here imports kopf, kubernetes, azure or ray (import-linter checks it).
"""
