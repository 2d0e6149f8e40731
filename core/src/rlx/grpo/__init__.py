"""Pure GRPO algorithm code over tensors: advantages, losses, KL, metrics. No I/O, no Ray."""
