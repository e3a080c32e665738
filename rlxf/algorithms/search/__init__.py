"""The search papers, built on :mod:`rlxf.search`: each module plans with a policy over a built-in task
with gold, then trains on what its trees found.

- :mod:`.agent_q`: MCTS with self-critique ranking, then off-policy step-level DPO, iterated (Agent Q).
- :mod:`.agent_r`: revision trajectories spliced from MCTS trees and iterative self-training (Agent-R).
- :mod:`.rethink`: thought-level MCTS on the code task that rewrites failing thoughts from execution feedback (RethinkMCTS).
- :mod:`.cr_planner`: critics trained on MCTS data pick between reasoning and retrieval steps (CR-Planner).
- :mod:`.meds3`: step-level MCTS self-evolution, a look-back PRM and PRM vote-sum decoding (MedS³).
- :mod:`.board`: a game LM as prior and value in MCTS (external), and search traces learned in text (internal).
"""
