"""Black-box optimisation from human or simulated feedback, towards prompt optimisation.

- :mod:`.zo_ranksgd`: zeroth-order descent that sees only rankings of perturbed points (ZO-RankSGD),
  with its baselines (pairwise-comparison descent, random search) at equal oracle queries.
- :mod:`.soft_prompt`: a soft prompt of a frozen language model as a black-box point, scored by gold.
"""
