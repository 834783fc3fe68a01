"""The fleet: serving capacity at a p99 target, GPUs needed, cost and energy per million inferences."""
