"""Running one side of a peer benchmark in its own process, so each side's peak memory is its own.

The parent calls :func:`run_side`; the child (the same script with ``--side NAME``) ends with
:func:`report_side`, which prints one ``RESULT {json}`` line with the child's peak RSS added. With
``imports_only`` the child gets ``--imports-only``: it imports that side's libraries and reports at
once, a baseline to subtract, so the libraries' own resident memory does not swamp the comparison.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def report_side(out: dict) -> None:
    """Print the child's result, with its peak resident memory in MB."""
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def run_side(script: str, name: str, args, keys: tuple[str, ...], imports_only: bool = False) -> dict:
    """Run ``script --side name`` with the options ``keys`` of ``args``; its RESULT as a dict."""
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in keys] + ["--imports-only"] * imports_only
    proc = subprocess.run([sys.executable, script, "--side", name, *flags], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"{name} side failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])
