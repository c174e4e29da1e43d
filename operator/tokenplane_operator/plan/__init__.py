"""Capacity planner: model + workload -> AKS GPU SKU, MIG slice, parallelism, memory and cost per token."""
