"""TEMPORARY stand-in for rlxf.rewards.specs.reward_components (ISSUE17 contract, H2), so rlxf train
can be tested before it lands. Delete this file once it does."""

from __future__ import annotations

import numpy as np

from rlxf.rewards.specs import checked_values, load_reward


def reward_components(specs, tokenizer, rows, prompts_text, conversational, judge=False):
    out = {}
    for spec in specs:
        rs = load_reward(spec)

        def fn(s, rs=rs):
            idx = s.prompt_index
            comps = [tokenizer.decode(r, skip_special_tokens=True) for r in s.response_ids]
            cols = {}
            for i in idx:
                for k, v in rows[i].items():
                    if k != "prompt":
                        cols.setdefault(k, []).append(v)
            vals = checked_values(rs.name, rs.fn, [prompts_text[i] for i in idx], comps, cols, s.step)
            return [np.nan if v is None else v for v in vals]

        out[rs.name] = (fn, rs.weight)
    return out
