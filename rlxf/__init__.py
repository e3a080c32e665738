"""rlxf: reinforcement learning from any feedback."""

from rlxf.core.steps import Steps

__version__ = "0.1.0"
__all__ = ["Steps", "__version__"]
