"""The recorder: hooks on a model and optimizer that write a run log without slowing training."""
