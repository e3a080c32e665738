"""The loops: SFT, preference collection, reward training, DPO, RLOO, best-of-N, evaluation."""
