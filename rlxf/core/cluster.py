"""Where a run's work goes: the scale settings every lab takes in ``[run]``, and the one place that
connects to Ray (a cluster named by ``ray_address`` or ``$RAY_ADDRESS``, else a local instance).

``local`` never imports Ray. Every Ray entry point (the data-parallel learner, rollout actors,
sweeps) goes through :func:`connect_ray`, so a missing install or an unreachable cluster is
reported the same way, before any stage starts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields

EXECUTORS = ("local", "ray")
STRATEGIES = ("ddp", "fsdp")
BACKENDS = ("hf", "vllm", "fake")  # rlxf.executors.generation; "fake" is the test engine
WEIGHT_SYNCS = ("auto", "object_store", "collective")


class ClusterError(RuntimeError):
    """Ray is missing, or the cluster a run names cannot be reached."""


@dataclass
class ScaleSettings:
    """How a run is spread out; none of it changes what a run computes, so none of it is part of the
    run's identity (a run may resume with other settings).

    ``executor``: "local" (everything in this process) or "ray". With "ray":
    ``learner_workers``: Ray Train workers that run the optimisation loop with data-parallel
    gradients (gloo on CPU, NCCL on GPU); ``learner_threads``: torch threads in each (0: torch's
    default); ``strategy``: "ddp" (every worker holds the whole model) or "fsdp" (torch's
    fully_shard; meant for GPUs); ``rollout_workers``: Ray actors that sample for online methods,
    each reserving ``rollout_cpus`` of a CPU; ``backend``: the generation engine of a rollout actor
    ("hf"; "vllm" on a GPU; "fake", a test engine); ``weight_sync``: how a new version's weights reach
    the rollout actors ("object_store": one ``ray.put``, for one node; "collective": a broadcast in a
    process group of the learner and the actors, for several; "auto": by the node count);
    ``ray_address``: a running cluster ("" = ``$RAY_ADDRESS``, and without it a local instance with
    ``num_cpus`` logical CPUs, 0 = every core); ``timeout_s`` bounds every wait on a worker."""

    executor: str = "local"
    learner_workers: int = 1
    learner_threads: int = 0
    strategy: str = "ddp"
    rollout_workers: int = 1
    rollout_cpus: float = 0.5
    backend: str = "hf"
    weight_sync: str = "auto"
    ray_address: str = ""
    num_cpus: int = 0
    timeout_s: float = 1800.0

    def problems(self) -> list[str]:
        """What is wrong with these settings, one line per option (empty when they are usable)."""
        out = []
        if self.executor not in EXECUTORS:
            out.append(f"run.executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.learner_workers < 1:
            out.append(f"run.learner_workers must be >= 1, got {self.learner_workers}")
        elif self.learner_workers > 1 and self.executor != "ray":
            out.append(f"run.learner_workers = {self.learner_workers} needs run.executor = \"ray\"")
        if self.rollout_workers < 1:
            out.append(f"run.rollout_workers must be >= 1, got {self.rollout_workers}")
        if self.learner_threads < 0:
            out.append(f"run.learner_threads must be >= 0, got {self.learner_threads}")
        if self.strategy not in STRATEGIES:
            out.append(f"run.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.backend not in BACKENDS:
            out.append(f"run.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.weight_sync not in WEIGHT_SYNCS:
            out.append(f"run.weight_sync must be one of {', '.join(WEIGHT_SYNCS)}, got {self.weight_sync!r}")
        if not 0 < self.rollout_cpus <= 64:
            out.append(f"run.rollout_cpus must be a CPU share in (0, 64], got {self.rollout_cpus}")
        if self.timeout_s <= 0:
            out.append(f"run.timeout_s must be > 0, got {self.timeout_s}")
        return out

    @property
    def distributed(self) -> bool:
        return self.executor == "ray" and self.learner_workers > 1


SCALE_KEYS = tuple(f.name for f in fields(ScaleSettings))


def scale_of(section) -> ScaleSettings:
    """The :class:`ScaleSettings` held by a config section that has their fields (``[run]``)."""
    return ScaleSettings(**{k: getattr(section, k) for k in SCALE_KEYS})


_BY_VALUE: list = []  # modules whose functions travel to Ray workers by value


def pickle_by_value(module) -> None:
    """Send ``module``'s functions to Ray workers by value: a reward file the user named by its path
    (or a module beside it) is not importable in a worker process, which starts elsewhere."""
    _BY_VALUE.append(module)
    _register(module)


def _register(module) -> None:
    for name in ("cloudpickle", "ray.cloudpickle"):  # the learner ships with one, Ray's own calls use the other
        pickler = sys.modules.get(name)
        if pickler is not None:
            pickler.register_pickle_by_value(module)


def unreachable(address: str, timeout_s: float = 5.0) -> str:
    """Why a ``host:port`` (or ``ray://host:port``) address takes no TCP connection within ``timeout_s``
    ("" when it does, or when the address is one of Ray's own words such as "auto"). Ray itself waits
    minutes before giving up on a wrong address; this answers in seconds."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return ""
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        return f"no connection to {host}:{port} ({e.strerror or e})"
    return ""


def connect_ray(scale: ScaleSettings | None = None):
    """The ``ray`` module, connected: to ``scale.ray_address`` or ``$RAY_ADDRESS`` when either is set,
    else to a local instance started here. Raises :class:`ClusterError` naming what to install or check."""
    scale = scale or ScaleSettings(executor="ray")
    try:
        import ray
    except ImportError:
        raise ClusterError("run.executor = \"ray\" needs Ray, which is not installed: pip install 'rlxf[ray]'") from None
    import cloudpickle  # noqa: F401 - Ray depends on it; imported so the modules below register with it
    import ray.cloudpickle  # noqa: F401

    for module in _BY_VALUE:
        _register(module)
    if ray.is_initialized():
        return ray
    address = scale.ray_address or os.environ.get("RAY_ADDRESS", "")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        where = "run.ray_address" if scale.ray_address else "$RAY_ADDRESS"
        fix = (f"Start one with `ray start --head` and use the address it prints, or unset {where} to run on "
               "a local instance")
        problem = unreachable(address)
        if problem:
            raise ClusterError(f"cannot reach the Ray cluster at {address!r} ({where}): {problem}. {fix}")
        try:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        except Exception as e:  # ConnectionError, or a timeout inside Ray's own client
            auth = ("" if os.environ.get("RAY_AUTH_MODE") else " A cluster started by `ray start` (Ray >= 2.59) "
                    "asks for a token: export RAY_AUTH_MODE=token on this machine too.")
            raise ClusterError(f"cannot join the Ray cluster at {address!r} ({where}): {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}.{auth} {fix}") from None
        return ray
    # "local" starts a new instance even while a `ray start` cluster runs on this machine (without it,
    # ray.init would try to join that cluster and refuse num_cpus)
    ray.init(address="local", num_cpus=scale.num_cpus or os.cpu_count(), **quiet)
    return ray
