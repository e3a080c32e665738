"""Target networks (the ``*_target`` modules of an offline control model) in a checkpoint.

They are frozen parameters, which :func:`rlxf.algorithms.loop.trainable_state` leaves out, yet they
move every step (Polyak averaging), so a stage keeps them in the loop's ``extra_state`` to resume exactly.
"""

from __future__ import annotations

import torch


def _targets(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_children() if name.endswith("_target")}


def target_state(model: torch.nn.Module) -> dict:
    """Every target network's weights, by module name."""
    return {"targets": {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
                        for name, m in _targets(model).items()}}


def load_target_state(model: torch.nn.Module, state: dict) -> None:
    """Put back what :func:`target_state` kept (a checkpoint without it leaves the targets as they are)."""
    for name, weights in state.get("targets", {}).items():
        _targets(model)[name].load_state_dict(weights)
