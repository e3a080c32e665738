"""Where rollouts and rewards are computed: in-process (``local``, the default) or on Ray actors.

Both backends offer the same two calls to the online controller, ``sample`` and ``score``, and
derive every random stream from the same seeds, so a short run gives the same metrics on
either. ``local`` never imports Ray.
"""

from __future__ import annotations

EXECUTORS = ("local", "ray")


def make_executor(kind: str = "local", **kwargs):
    """``kind``: "local" or "ray"; ``kwargs`` go to the backend's constructor."""
    if kind == "local":
        from rlxf.executors.local import LocalExecutor

        return LocalExecutor(**kwargs)
    if kind == "ray":
        from rlxf.executors.ray_backend import RayExecutor

        return RayExecutor(**kwargs)
    raise ValueError(f"executor: unknown executor {kind!r}; expected one of {', '.join(EXECUTORS)}")
