"""Black-box optimisation from human or simulated feedback, towards prompt optimisation.

- :mod:`.zo_ranksgd`: zeroth-order descent that sees only rankings of perturbed points (ZO-RankSGD),
  with its baselines (pairwise-comparison descent, random search) at equal oracle queries.
- :mod:`.soft_prompt`: a soft prompt of a frozen language model as a black-box point, scored by gold.
- :mod:`.editor`: the editor role (text in: a prompt and error feedback; text out: an edited prompt),
  simulated from a rewrite library or played by a real model through ``LMRole``.
- :mod:`.prompt_agent`: PromptAgent's MCTS over prompt edits, with beam, greedy and random-mutation
  baselines at equal eval calls, on :mod:`rlxf.tasks.prompt_tasks`.
- :mod:`.promst`: PROMST's feedback rules, grouped and summarised feedback, depth-first prompt tree and
  score model, on the multi-step game :mod:`rlxf.tasks.prompt_game`.
"""
