"""The feedback app: people label in a browser, the label store keeps it, query selection
decides what to ask next. Start it with ``rlxf label serve --project DIR``."""
