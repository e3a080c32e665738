"""The bottom layer: per-step tensors, configs, runs, seeding. Needs only torch."""

from rlxf.core.steps import Steps

__all__ = ["Steps"]
