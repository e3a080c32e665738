"""Training an outcome reward model on comparisons with the Bradley-Terry loss."""

from __future__ import annotations

from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.rewards.model import RewardModel, bradley_terry_loss


def train_reward_model(run: Run, stage: str, rm: RewardModel, pairs: list[tuple[list[int], list[int], list[int]]],
                       cfg: OptimConfig, seed: int, quiet: bool = False) -> None:
    """``pairs`` holds (prompt_ids, chosen_ids, rejected_ids)."""
    make_batch = epoch_batches(len(pairs), cfg.batch_size, seed)

    def loss_fn(micro: list[int], batch: list[int]):
        rows = [pairs[i] for i in micro]
        prompts = [r[0] for r in rows]
        scores = rm.forward(prompts + prompts, [r[1] for r in rows] + [r[2] for r in rows])
        r_w, r_l = scores[: len(rows)], scores[len(rows):]
        loss = bradley_terry_loss(r_w, r_l).sum() / len(batch)
        acc = (r_w > r_l).float().sum().item() / len(batch)
        return loss, {"loss": loss.item(), "accuracy": acc}

    train(run, stage, rm.model, cfg, make_batch, loss_fn, quiet=quiet)

