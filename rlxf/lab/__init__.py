"""Experiments: pipelines of stages, reports."""
