"""Training: architecture registry, distribution strategy, TensorBoard callbacks, metrics."""
