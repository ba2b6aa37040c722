"""Callbacks that record a run from inside a training framework (each needs its framework: an extra)."""
