"""SkillMimic's unified imitation reward for a body that handles an object, from state-only references.

Wang et al., "SkillMimic: Learning Reusable Basketball Skills from Demonstrations". Every factor is
``exp(-w * e)`` with ``e`` a mean squared error between the simulated state and the reference state at
the same time step (``e`` averages over coordinates)::

    r_body = exp(-w_pos * e_pos) * exp(-w_vel * e_vel)       body key positions and their velocities
    r_obj  = exp(-w_obj * e_obj)                              object position
    r_ig   = exp(-w_ig * e_ig)                                interaction graph: vectors body -> object
    r_cg   = exp(-w_contact * |c - c_ref|)                    body-object contact (0/1) against the reference
    r      = r_body * r_obj * r_ig * r_cg                     (``mode="product"``, the paper's)

``mode="sum"`` averages the four factors instead: the additive ablation, under which a policy can earn
most of the reward by tracking the body and ignoring the object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImitationWeights:
    """The ``w`` of each factor; errors are in the body's units (metres, metres/second)."""

    pos: float = 100.0
    vel: float = 1.0
    obj: float = 100.0
    ig: float = 100.0
    contact: float = 5.0


def _mse(a, b) -> np.ndarray:
    return np.mean((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2, axis=-1)


def unified_imitation_reward(body, body_vel, obj, contact, ref_body, ref_body_vel, ref_obj, ref_contact,
                             w: ImitationWeights = ImitationWeights(), mode: str = "product") -> dict:
    """The four factors and their combination, each an array of the batch shape (``[...]``).

    ``body``/``body_vel`` ``[..., P]`` (key positions, flattened), ``obj`` ``[..., Q]`` with ``Q`` equal
    to the body's point dimension (the interaction graph is ``obj - body point`` for every body point),
    ``contact`` ``[...]`` in {0, 1}; the ``ref_`` arrays are the reference's at the same step.
    """
    if mode not in ("product", "sum"):
        raise ValueError(f"unified_imitation_reward: mode must be 'product' or 'sum', got {mode!r}")
    body, ref_body, obj, ref_obj = (np.asarray(x, dtype=float) for x in (body, ref_body, obj, ref_obj))
    q = obj.shape[-1]
    if body.shape[-1] % q:
        raise ValueError(f"unified_imitation_reward: body has {body.shape[-1]} coordinates, not a multiple of "
                         f"the object's {q}")
    graph = lambda b, o: (o[..., None, :] - b.reshape(b.shape[:-1] + (-1, q))).reshape(b.shape)  # noqa: E731
    r_body = np.exp(-w.pos * _mse(body, ref_body)) * np.exp(-w.vel * _mse(body_vel, ref_body_vel))
    r_obj = np.exp(-w.obj * _mse(obj, ref_obj))
    r_ig = np.exp(-w.ig * _mse(graph(body, obj), graph(ref_body, ref_obj)))
    r_cg = np.exp(-w.contact * np.abs(np.asarray(contact, dtype=float) - np.asarray(ref_contact, dtype=float)))
    total = r_body * r_obj * r_ig * r_cg if mode == "product" else (r_body + r_obj + r_ig + r_cg) / 4
    return {"body": r_body, "obj": r_obj, "ig": r_ig, "contact": r_cg, "reward": total}
