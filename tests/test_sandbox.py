"""The sandbox stops code that loops, hogs memory, opens sockets, writes outside its directory or
forks; each is reported as failed with its reason, and the host is left as it was."""

import os
import socket
import time

import pytest

from rlxf.tasks.sandbox import Limits, run, run_many

ADD = [([1, 2], 3), ([2, 2], 4), ([0, 5], 5)]
FAST = Limits(cpu_s=1, wall_s=2, memory_mb=256)


def _gone(pid_file):
    """The candidate's process group no longer exists."""
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_correct_code_passes_and_wrong_code_gets_partial_credit():
    assert run("def f(a, b):\n    return a + b\n", "f", ADD).pass_rate == 1.0
    half = run("def f(a, b):\n    return a * b\n", "f", ADD)  # right only for 2, 2
    assert half.status == "ok" and half.pass_rate == pytest.approx(1 / 3)
    text = half.feedback()
    assert "passed 1/3" in text and "f(1, 2): expected 3, got 2" in text and "f(0, 5): expected 5, got 0" in text


def test_load_errors_are_reported():
    syntax = run("def f(a, b)\n    return 1\n", "f", ADD)
    assert syntax.status == "error" and "SyntaxError" in syntax.reason and syntax.pass_rate == 0.0
    missing = run("def g(a, b):\n    return 1\n", "f", ADD)
    assert missing.status == "error" and "does not define f" in missing.reason
    raised = run("def f(a, b):\n    return a / 0\n", "f", ADD)
    assert raised.status == "ok" and raised.pass_rate == 0.0 and "ZeroDivisionError" in raised.cases[0].got


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    code = "def f(a, b):\n    while True:\n        pass\n"
    t = time.monotonic()
    res = run(code, "f", ADD, Limits(cpu_s=1, wall_s=10))  # a wall limit that the CPU limit beats
    assert res.status == "timeout" and "CPU" in res.reason and res.pass_rate == 0.0
    assert time.monotonic() - t < 10


def test_sleeping_code_is_killed_with_its_process_group_at_the_wall_limit(tmp_path):
    code = ("import os, time\nopen('pid', 'w').write(str(os.getpgid(0)))\nPID = open('pid').read()\n"
            "def f(a, b):\n    if a == 2:\n        time.sleep(60)\n    return PID\n")
    t = time.monotonic()
    res = run(code, "f", ADD, FAST)
    assert time.monotonic() - t < 30  # the sleep is 60 s: only the kill ends it sooner
    assert res.status == "timeout" and "wall" in res.reason
    # The first case (before the hang) was streamed back: its result carries the group id.
    assert len(res.cases) == 1 and not res.cases[0].passed
    pid_file = tmp_path / "pid"
    pid_file.write_text(res.cases[0].got.strip("'"))
    _gone(pid_file)


def test_ten_gigabyte_allocation_is_stopped():
    res = run("def f(a, b):\n    return len(bytearray(10 * 2**30))\n", "f", ADD, FAST)
    assert res.status == "memory" and "256 MB" in res.reason
    grow = run("def f(a, b):\n    x = []\n    while True:\n        x.append(' ' * 10**6)\n", "f", ADD, FAST)
    assert grow.status == "memory"


def test_socket_is_refused_and_nothing_connects():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        code = f"import socket\ndef f(a, b):\n    socket.create_connection(('127.0.0.1', {port}))\n    return a + b\n"
        res = run(code, "f", ADD, FAST)
        assert res.status == "refused" and "socket" in res.reason and res.pass_rate == 0.0
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_writes_outside_the_directory_are_refused_and_inside_allowed(tmp_path):
    outside, keep = tmp_path / "evil.txt", tmp_path / "keep.txt"
    keep.write_text("mine")
    res = run(f"def f(a, b):\n    open({str(outside)!r}, 'w').write('x')\n", "f", ADD, FAST)
    assert res.status == "refused" and str(outside) in res.reason and not outside.exists()
    rm = run(f"import os\ndef f(a, b):\n    os.remove({str(keep)!r})\n", "f", ADD, FAST)
    assert rm.status == "refused" and "os.remove" in rm.reason and keep.read_text() == "mine"
    low = run(f"import os\ndef f(a, b):\n    os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)\n", "f", ADD, FAST)
    assert low.status == "refused" and not outside.exists()
    moved = run(f"import os\ndef f(a, b):\n    os.chdir({str(tmp_path)!r})\n    open('evil.txt', 'w')\n", "f", ADD, FAST)
    assert moved.status == "refused" and not outside.exists()
    inside = run("def f(a, b):\n    open('scratch.txt', 'w').write('x')\n    return a + b\n", "f", ADD, FAST)
    assert inside.status == "ok" and inside.pass_rate == 1.0


def test_fork_and_subprocess_are_refused_even_when_the_code_catches_the_error(tmp_path):
    marker = tmp_path / "forked"
    code = (f"import os\ndef f(a, b):\n    try:\n        if os.fork() == 0:\n            open({str(marker)!r}, 'w')\n"
            "    except BaseException:\n        pass\n    return a + b\n")
    res = run(code, "f", ADD, FAST)
    assert res.status == "refused" and "os.fork" in res.reason and res.pass_rate == 0.0
    sub = run(f"import subprocess\ndef f(a, b):\n    subprocess.run(['touch', {str(marker)!r}])\n", "f", ADD, FAST)
    assert sub.status == "refused" and "subprocess" in sub.reason
    shell = run(f"import os\ndef f(a, b):\n    os.system('touch {marker}')\n", "f", ADD, FAST)
    assert shell.status == "refused" and "os.system" in shell.reason
    time.sleep(0.2)
    assert not marker.exists()


def test_output_is_captured_and_the_directory_removed():
    res = run("import os\nprint('cwd', os.getcwd())\ndef f(a, b):\n    return a + b\n", "f", ADD, FAST)
    assert res.pass_rate == 1.0 and res.output.startswith("cwd ")
    assert not os.path.exists(res.output.split()[1])


def test_run_many_keeps_order_and_runs_in_parallel():
    jobs = [(f"import time\ntime.sleep(2)\ndef f(a, b):\n    return a + b + {k}\n", "f", ADD) for k in range(4)]
    t = time.monotonic()
    results = run_many(jobs, Limits(wall_s=8), workers=4)
    elapsed = time.monotonic() - t
    assert [r.pass_rate for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert elapsed < 6  # one after another, the sleeps alone take 8 s (sleeping takes no CPU: load barely matters)


def test_bad_limits_are_named():
    with pytest.raises(ValueError, match="cpu_s"):
        Limits(cpu_s=0)
    with pytest.raises(ValueError, match="workers"):
        run_many([], workers=0)
