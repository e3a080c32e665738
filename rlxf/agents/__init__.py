"""Language agents: text environments, multi-turn episodes and the learners and papers built on them.

- :mod:`rlxf.agents.env`: the gymnasium-style text-environment interface, its vectorised form, and the
  plug-in loader (``make_env("maze")`` or ``make_env("my_envs.py:make")``).
- :mod:`rlxf.agents.episodes`: multi-turn episodes, scripted policies of set skill, offline datasets
  (JSONL on disk) and success rates.
- :mod:`rlxf.agents.render`: turning an episode into token ids through the chat template, with the
  mask of the tokens the agent wrote (its actions), and an LM actor that samples actions.
- :mod:`rlxf.agents.tasks.dialogue`, :mod:`~rlxf.agents.tasks.car_dealer`, :mod:`~rlxf.agents.tasks.endgame`:
  twenty questions and guess-my-city against an oracle role, selling a car to a scripted buyer, and Nim
  against an exact solver (LMRL-Gym's dialogue, negotiation and endgame tasks).
- :mod:`rlxf.agents.ppo`: multi-turn PPO on the online controller, with turn-level GAE spread onto action tokens.
- :mod:`rlxf.agents.abm`: AgentTorch's LLM archetypes in a differentiable epidemic ABM (archetype broadcast vs
  LLM-as-agent on a subsample vs a heuristic rule, with gradient calibration through the simulator).
- :mod:`rlxf.agents.offline`: offline multi-turn learners (BC, filtered BC, Monte-Carlo return regression,
  token-level ILQL) and Q-guided decoding; their losses are in :mod:`rlxf.objectives.agents`.
- :mod:`rlxf.agents.digiq`: Digi-Q, a TD critic on frozen LM features and Best-of-N policy extraction.
- :mod:`rlxf.agents.perf`: PerfRL, RRHF on code rewrites rewarded by a deterministic cost (bytecode
  instructions counted in the sandbox) with the tests passing.
- :mod:`rlxf.agents.tasks.web`: synthetic websites (page graphs with links and forms, described in text)
  and an instruction-following environment on them (click, type, submit).
- :mod:`rlxf.agents.qweb`: QWeb and MetaQWeb, a DQN with a factorised Q over (element, click/type, field),
  a warm-start curriculum, and hindsight instruction generation (Learning to Navigate the Web).
- :mod:`rlxf.agents.tasks.tools`: a tool-use task (shopping questions answered through a price lookup and
  a calculator, three levels), and :mod:`rlxf.agents.itool`: iTool, iterative reinforced fine-tuning on it
  (easy-to-hard SFT, mined fragment deficiencies, SimPO on step pairs).
- :mod:`rlxf.agents.pae`: PAE: a proposer writes tasks from a website's description, the agent attempts
  them, a judge grades the outcome, and online filtered BC trains on the judged successes.
- :mod:`rlxf.agents.oni`: ONI, PPO with an intrinsic reward distilled online from an LM judge's labels of
  event captions (hash table or bag-of-words classifier, per-episode count decay), on the caption grid of
  :mod:`rlxf.agents.tasks.caption_grid`.
- :mod:`rlxf.agents.read`: ReAd, an LM planner for two agents whose proposals a prefix critic (Q on joint-action
  prefixes, fit by Monte Carlo regression) scores and sends back for refinement before execution.
- :mod:`rlxf.agents.game_on`: Game On, a text model as the RL experimenter: it proposes the next maze level and
  starting point, runs control PPO as its tool, reads results back as text and keeps a skill library.
"""
