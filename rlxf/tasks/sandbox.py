"""Run candidate Python code against unit tests in a subprocess that contains accidents.

Each run gets a fresh temporary working directory and a child ``python -I -S`` in its own
process group (killed whole on a wall-clock timeout). Before the candidate runs, the child sets
rlimits (CPU seconds, address space, file size, no core dumps) and installs an audit hook that
stops the process at the first socket, subprocess, fork, exec, signal, ``ctypes`` use or file
write outside its directory, reporting which. Tests run one by one and each result is streamed
back as it ends, so code that hangs in one case still gets credit for the cases before it.

This contains accidents (an infinite loop, a huge allocation, a stray ``os.remove``), not
attackers: the hook runs inside the same interpreter as the code it watches, and rlimits on
process count do nothing for root. Run untrusted code in a container or VM.

This module uses the standard library only: the child runs this very file as a script.
"""

from __future__ import annotations

import json
import os
import signal
import sys

# Audit events refused outright (prefix match), and events whose path arguments must lie inside
# the working directory (argument positions).
_REFUSED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
            "os.forkpty", "os.kill", "os.killpg", "pty.", "ctypes.", "os.startfile", "_posixsubprocess")
_PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
                "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
                "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (0, 1)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


# -- the child --------------------------------------------------------------------------------


def _child() -> None:
    """Read the job from stdin, limit and watch this process, load the code, run the tests, report each."""
    import copy
    import resource

    job = json.loads(sys.stdin.read())
    fd, work = job["result_fd"], job["work"]

    def send(msg: dict) -> None:
        os.write(fd, (json.dumps(msg) + "\n").encode())

    def leave(code: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - output already lost
                pass
        os._exit(code)

    def stop(kind: str, reason: str) -> None:
        send({"kind": kind, "reason": reason})
        leave(3)

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        full = os.path.realpath(os.fsdecode(path))  # relative to the current directory, wherever it went
        return full == work or full.startswith(work + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(_REFUSED):
            stop("refused", f"{event} is not allowed in the sandbox")
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes and path is not None and not inside(path):
                stop("refused", f"writing {os.fsdecode(path)!r} outside the sandbox directory")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    stop("refused", f"{event} on {os.fsdecode(args[i])!r} outside the sandbox directory")

    cpu = max(1, int(round(job["cpu_s"])))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = job["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    size = job["file_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.addaudithook(hook)

    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 200 else text[:200] + "..."

    space: dict = {"__name__": "candidate"}
    try:
        exec(compile(job["code"], "<candidate>", "exec"), space)
        fn = space[job["entry"]]
    except MemoryError:
        stop("memory", f"ran out of memory (limit {job['memory_mb']} MB) while loading")
    except KeyError:
        stop("error", f"the code does not define {job['entry']}")
    except BaseException as e:  # noqa: BLE001 - anything the candidate raises is its failure
        stop("error", f"{type(e).__name__} while loading: {e}")
    ops = [0]

    def count(frame, event, arg):  # the local tracer of a candidate frame: count its bytecode instructions
        if event == "opcode":
            ops[0] += 1
        return count

    def trace(frame, event, arg):  # the global tracer: only frames of the candidate's own code are counted
        if frame.f_code.co_filename != "<candidate>":
            return None
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return count

    for args, expected in job["tests"]:
        call = f"{job['entry']}({', '.join(map(short, args))})"
        ops[0] = 0
        try:
            args = copy.deepcopy(args)
            if job["count"]:
                sys.settrace(trace)
            try:
                got = fn(*args)
            finally:
                sys.settrace(None)
            passed, got_text = bool(got == expected), short(got)
        except MemoryError:
            stop("memory", f"ran out of memory (limit {job['memory_mb']} MB) in {call}")
        except RecursionError:
            passed, got_text = False, "RecursionError"
        except BaseException as e:  # noqa: BLE001
            passed, got_text = False, f"{type(e).__name__}: {e}"
        send({"kind": "case", "call": call, "passed": passed, "expected": short(expected), "got": got_text,
              "cost": ops[0]})
    send({"kind": "done"})
    leave(0)


if __name__ == "__main__":
    _child()

# The child exits inside _child, so it never imports what only the parent needs (~25 ms a run).
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402


# -- the parent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Per-run limits: CPU seconds, wall seconds (the whole group is killed after), address space
    in MB, largest file (and captured output) in MB, and how much output to keep in the result."""

    cpu_s: float = 2.0
    wall_s: float = 5.0
    memory_mb: int = 512
    file_mb: int = 8
    keep_output: int = 2000

    def __post_init__(self):
        for name in ("cpu_s", "wall_s", "memory_mb", "file_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox Limits: {name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class CaseResult:
    """One test: its call as text, whether it passed, and what came back (repr or the error).
    ``cost``: the bytecode instructions the candidate's own code executed in the call, counted
    when the run asked for it (:func:`run` with ``count=True``), else 0."""

    call: str
    passed: bool
    expected: str
    got: str
    cost: int = 0


@dataclass
class RunResult:
    """The outcome of one run. ``status``: ``"ok"`` (the code ran; see ``cases``), ``"error"``
    (it failed to load: syntax error, exception at import, no such function), ``"timeout"``,
    ``"memory"``, ``"refused"`` (the audit hook stopped it) or ``"crash"`` (killed by a signal).
    ``reason`` says what happened in words; ``output`` is the start of what the code printed."""

    status: str
    reason: str
    cases: list[CaseResult] = field(default_factory=list)
    n_tests: int = 0
    output: str = ""

    @property
    def cost(self) -> int:
        """Bytecode instructions executed over all cases (with ``count=True``): a deterministic run time."""
        return sum(c.cost for c in self.cases)

    @property
    def pass_rate(self) -> float:
        return sum(c.passed for c in self.cases) / self.n_tests if self.n_tests else 0.0

    def feedback(self, max_cases: int = 3) -> str:
        """Execution feedback as text for a model: the failure reason and the first failing cases."""
        lines = [f"passed {sum(c.passed for c in self.cases)}/{self.n_tests} tests"]
        if self.status != "ok":
            lines.append(f"{self.status}: {self.reason}")
        for c in [c for c in self.cases if not c.passed][:max_cases]:
            lines.append(f"{c.call}: expected {c.expected}, got {c.got}")
        return "\n".join(lines)


def run(code: str, entry: str, tests: list[tuple[list, object]], limits: Limits = Limits(),
        count: bool = False) -> RunResult:
    """Define ``code`` in a sandboxed child and call ``entry(*args)`` for each ``(args, expected)``
    in ``tests`` (JSON-able values; a case passes when the result ``==`` expected). ``count``: trace
    each call and count the bytecode instructions executed in the code's own frames (builtins it
    calls count as one instruction), a cost that is the same on every run and machine load, unlike
    wall time; tracing slows the calls several times over."""
    with tempfile.TemporaryDirectory(prefix="rlxf_sandbox_") as work:
        work = os.path.realpath(work)
        read_fd, write_fd = os.pipe()
        job = json.dumps({"code": code, "entry": entry, "tests": tests, "work": work,
                          "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                          "result_fd": write_fd, "count": count})
        out_path = os.path.join(work, ".output")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)], cwd=work,
                                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                                    start_new_session=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
        os.close(write_fd)
        timed_out = False
        try:
            proc.stdin.write(job.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        chunks: list[bytes] = []
        reader = ThreadPoolExecutor(1)
        pending = reader.submit(_read_all, read_fd, chunks)
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)
        pending.result(timeout=5)  # the pipe closes once every process holding it is gone
        reader.shutdown()
        with open(out_path, "rb") as f:
            output = f.read(limits.keep_output).decode(errors="replace")
        return _result(b"".join(chunks).decode(errors="replace"), len(tests), proc.returncode, timed_out, limits,
                       output)


def run_many(jobs: list[tuple[str, str, list]], limits: Limits = Limits(), workers: int = 2,
             count: bool = False) -> list[RunResult]:
    """:func:`run` for each ``(code, entry, tests)``, ``workers`` children at a time, in order."""
    if workers < 1:
        raise ValueError(f"sandbox run_many: workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda j: run(*j, limits=limits, count=count), jobs))


def _read_all(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        while piece := f.read(65536):
            chunks.append(piece)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _result(stream: str, n_tests: int, rc: int, timed_out: bool, limits: Limits, output: str) -> RunResult:
    cases, final = [], None
    for line in stream.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("kind") == "case":
            cases.append(CaseResult(msg["call"], msg["passed"], msg["expected"], msg["got"], msg.get("cost", 0)))
        else:
            final = msg
    res = RunResult("ok", "ran", cases, n_tests, output)
    if final is not None and final["kind"] != "done":
        res.status, res.reason = final["kind"], final["reason"]
    elif timed_out:
        res.status, res.reason = "timeout", f"still running after {limits.wall_s} s wall time (process group killed)"
    elif rc in (-signal.SIGXCPU, -signal.SIGKILL) and final is None:
        res.status, res.reason = "timeout", f"used more than {limits.cpu_s} s of CPU"
    elif rc == -signal.SIGXFSZ:
        res.status, res.reason = "refused", f"wrote a file or output over {limits.file_mb} MB"
    elif final is None:
        res.status, res.reason = "crash", f"the process ended with code {rc} before reporting"
    return res
