"""Critique as feedback: critics that judge an answer and name its first wrong step, how their
critiques are written and read (:mod:`rlxf.critique.format`), and how critique quality is measured
by outcome."""
