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
from pathlib import Path


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


# -- the real model (``--model smollm2``) -------------------------------------------------------------

SMOLLM2_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def smollm2_policy(lora_r: int, lora_dropout: float = 0.05):
    """rlxf's SmolLM2 policy in float32 through rlxf's own loader, with LoRA on every linear layer of the
    blocks when ``lora_r`` > 0."""
    from rlxf.policies import loading

    lora = loading.LoraSettings(r=lora_r, alpha=16, dropout=lora_dropout, target_modules=SMOLLM2_LORA_TARGETS)
    settings = loading.ModelSettings(path=loading.SMOLLM2, dtype="float32", device="cpu")
    return loading.load_policy(settings, lora if lora_r else None)


def in_child(code: str) -> str:
    """Run Python ``code`` in a fresh process beside this module; its stdout. The parent of a peak-memory
    comparison must stay small: Linux carries a process's peak RSS into the children it forks."""
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                           + code], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return proc.stdout.strip().splitlines()[-1]


def smollm2_float_dir() -> str:
    """The float HF directory rlxf's loader caches for SmolLM2 (converted once, in a child process, if missing)."""
    return in_child("from rlxf.policies import loading as L; "
                    "print(L.float_dir(L.ModelSettings(path=L.SMOLLM2)))")


def peft_lora_config(lora_r: int, lora_dropout: float = 0.05):
    """The peer's LoRA: the same rank, alpha, dropout and target modules as :func:`smollm2_policy`."""
    from peft import LoraConfig

    return LoraConfig(r=lora_r, lora_alpha=16, lora_dropout=lora_dropout, target_modules=SMOLLM2_LORA_TARGETS,
                      task_type="CAUSAL_LM")


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """A chat prompt rendered as text with the generation prompt, the same string both sides tokenize."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def read_jsonl(path: Path, n: int = 0) -> list[dict]:
    """The first ``n`` rows of a JSONL file (all when ``n`` is 0)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < n:
        sys.exit(f"{path} has {len(rows)} rows, fewer than the {n} asked for")
    return rows[:n] if n else rows


def time_matmul(hidden: int, threads: int, rows: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a plain float32 ``[rows, hidden] @ [hidden, hidden]`` matmul on ``threads`` threads, the
    fastest of ``repeats`` timings of 10 products: the machine's practical limit for this model's matmuls."""
    import time

    import torch

    torch.set_num_threads(threads)
    a, w = torch.randn(rows, hidden), torch.randn(hidden, hidden)
    a @ w  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            torch.mm(a, w)
        best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * rows * hidden * hidden / best


def training_flops(params: int, tokens: int, lora: bool) -> float:
    """Model FLOPs of training on ``tokens`` tokens: 6 per parameter and token for full fine-tuning (forward 2,
    backward 4); with LoRA 4 (forward 2, activation gradients 2: frozen weights get no weight gradient, and the
    adapters' own FLOPs, under 1% at r=16, are not counted)."""
    return (4 if lora else 6) * params * tokens


def alternate(run, repeats: int, describe) -> tuple[dict[str, dict], dict[str, float]]:
    """``run(name)`` for TRL and rlxf in turn, ``repeats`` times: each side's fastest run and its lowest peak
    RSS (which varies between runs for other reasons than speed); ``describe(result)`` says how a run went."""
    best: dict[str, dict] = {}
    peak: dict[str, float] = {}
    for rep in range(repeats):
        for name in ("trl", "rlxf"):
            r = run(name)
            print(f"run {rep + 1}/{repeats} {name}: {describe(r)}", flush=True)
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
            peak[name] = min(peak.get(name, float("inf")), r["peak_rss_mb"])
    return best, peak


def add_model_options(p, tiny: str) -> None:
    """The options that pick the model: ``--model`` ('' for ``tiny``, or smollm2), ``--tuning``, ``--lora-r``."""
    import argparse

    p.add_argument("--model", choices=["", "smollm2"], default="",
                   help=f"'' (default): {tiny}; smollm2: SmolLM2-135M-Instruct, full fine-tuning and LoRA")
    p.add_argument("--tuning", choices=["both", "full", "lora"], default="both", help="with --model smollm2")
    p.add_argument("--lora-r", type=int, default=16, help="the LoRA rank with --model smollm2")
    p.add_argument("--profile", type=int, default=0, choices=[0, 1],
                   help="1: time rlxf's run by phase (forward, decode, backward, optimiser, other) and print it")
    p.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--lora", type=int, default=0, help=argparse.SUPPRESS)


def fill_defaults(args, tiny: dict, real: dict) -> None:
    """Options left unset take the tiny model's default, or the real model's with ``--model``."""
    for k, v in (real if args.model else tiny).items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def configurations(args, what: str):
    """For the real model: its float directory into ``args.model_dir``, then for each configuration of
    ``--tuning`` ``args.lora`` set and a header printed. (The matmul limit is timed by rlxf's side right after
    its run, on the same share of a machine whose other load comes and goes: :func:`time_matmul`.)"""
    args.model_dir = smollm2_float_dir()
    for tuning in (["full", "lora"] if args.tuning == "both" else [args.tuning]):
        args.lora = args.lora_r if tuning == "lora" else 0
        print(f"== {tuning} fine-tuning" + (f" (LoRA r {args.lora})" if args.lora else "") + f": {what}, "
              f"{args.threads} threads", flush=True)
        yield tuning


class PhaseTimer:
    """Wall time of a training run by phase: the model's forward calls (training with gradient, scoring or
    prefill without, one-token decode steps), ``Tensor.backward`` and the optimiser's ``step``; the rest of the
    timed seconds is everything else (tokenising, sampling arithmetic, rewards, Python). For ``--profile``."""

    def __init__(self, model):
        import torch

        self.seconds: dict[str, float] = {}
        self._undo = []
        self._depth = 0  # only the outermost of nested timed calls counts

        def phase_of(a, kw) -> str:
            ids = kw.get("input_ids", a[0] if a else None)
            if torch.is_grad_enabled():
                return "forward with gradient (training)"
            if ids is not None and ids.shape[1] == 1:
                return "decode steps (sampling)"
            if kw.get("use_cache"):
                return "prefill (sampling)"
            return "forward without gradient (reference / scoring)"

        # the whole model's forward and its body's (packed pair scoring calls the body and the head itself)
        for module in {id(m): m for m in (model, model.base_model)}.values():
            forward = module.forward
            module.forward = lambda *a, _f=forward, **kw: self._time(phase_of(a, kw), _f, a, kw)
            self._undo.append(lambda m=module: delattr(m, "forward"))
        for owner, name, phase in ((torch.Tensor, "backward", "backward"),
                                   (torch.optim.AdamW, "step", "optimiser step")):
            original = getattr(owner, name)
            setattr(owner, name, self._wrap(phase, original))
            self._undo.append(lambda owner=owner, name=name, original=original: setattr(owner, name, original))

    def _time(self, phase, fn, a, kw):
        import time

        if self._depth:
            return fn(*a, **kw)
        self._depth += 1
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            self._depth -= 1
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def _wrap(self, phase, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            return self._time(phase, fn, a, kw)

        return wrapper

    def close(self, total: float) -> dict[str, float]:
        """Undo the patches; the seconds per phase, with ``other`` = ``total`` less the phases."""
        for undo in self._undo:
            undo()
        out = dict(sorted(self.seconds.items(), key=lambda kv: -kv[1]))
        out["other (tokenising, sampling arithmetic, rewards, Python)"] = total - sum(self.seconds.values())
        return out


def print_phases(name: str, phases: dict[str, float]) -> None:
    total = sum(phases.values())
    print(f"{name}: where the timed {total:.1f} s went")
    for phase, s in phases.items():
        print(f"  {phase:<58} {s:7.1f} s  {100 * s / total:5.1f}%")
