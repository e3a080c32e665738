"""Online RL for language models: one rollout -> score -> update controller, one module per method."""

from rlxf.algorithms.online.controller import METHODS, KLSettings, OnlineConfig, OnlineError, train_online
from rlxf.rewards.scoring import RewardError, Samples, Scorer

__all__ = ["METHODS", "KLSettings", "OnlineConfig", "OnlineError", "RewardError", "Samples", "Scorer", "train_online"]
