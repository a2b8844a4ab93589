"""VLN-CE evaluation: metrics, the batched runner, reference agents."""
