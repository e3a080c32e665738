"""The critique papers: critics trained on feedback (MultiCritique, Critic-V), critique benchmarks and
self-check (CriticBench), data-quality criteria mined from preferences (CritiQ) and arena flywheels
(Arena Learning), each on the shared critique pieces of :mod:`rlxf.critique`."""
