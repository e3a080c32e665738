"""Built-in text environments (each registered by name in :data:`rlxf.agents.env.ENVS`)."""
