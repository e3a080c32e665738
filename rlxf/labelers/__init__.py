"""Who gives feedback: simulated labelers, model judges, people."""
