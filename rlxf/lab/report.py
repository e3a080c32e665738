"""``report.html`` for a run: the results table, learning curves and a gold-vs-KL plot."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlxf.core.runs import Run, atomic_write_bytes, atomic_write_text  # noqa: E402

# (stage, metric) pairs worth a curve, in display order
CURVES = [
    ("sft", "loss"), ("reward_model", "loss"), ("reward_model", "accuracy"), ("dpo", "loss"),
    ("dpo", "reward_accuracy"), ("rloo", "proxy_reward"), ("rloo", "gold_reward"), ("rloo", "kl"),
]


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _smooth(ys: list[float], k: int = 10) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_learning_curves(run: Run, path: Path) -> bool:
    rows = run.metrics()
    panels = [(s, m) for s, m in CURVES if any(r["stage"] == s and m in r for r in rows)]
    if not panels:
        return False
    cols = 3
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (stage, metric) in zip(axes.flat, panels):
        pts = [(r["step"], r[metric]) for r in rows if r["stage"] == stage and metric in r]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, alpha=0.3, color="C0")
        ax.plot(xs, _smooth(ys), color="C0")
        ax.set_title(f"{stage}: {metric}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Learning curves (faint: per step; solid: moving average of 10)")
    _save(fig, path)
    return True


def plot_gold_vs_kl(summary: dict, bon_curve: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if bon_curve:
        ns = sorted(bon_curve, key=int)
        kls = [bon_curve[n]["kl"] for n in ns]
        ax.plot(kls, [bon_curve[n]["gold"] for n in ns], "o-", color="C2", label="best-of-N gold")
        ax.plot(kls, [bon_curve[n]["proxy"] for n in ns], "o--", color="C2", alpha=0.5, label="best-of-N proxy")
        for n, x in zip(ns, kls):
            ax.annotate(f"N={n}", (x, bon_curve[n]["gold"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for i, (name, r) in enumerate(summary.items()):
        if name.startswith("best_of_"):
            continue
        ax.errorbar(r["kl"], r["gold_mean"], yerr=r["gold_se"], fmt="s", color=f"C{(i + 3) % 10}", capsize=3,
                    label=f"{name} gold")
    ax.set_xlabel("KL from the SFT policy (nats; best-of-N analytic, others sampled)")
    ax.set_ylabel("reward")
    ax.set_title("Gold reward against KL from SFT")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``report.html`` and its PNGs from what the run directory holds."""
    run_dir = Path(run_dir)
    run = Run.__new__(Run)  # read-only view: no config check, no repair
    run.dir, run.metrics_path = run_dir, run_dir / "metrics.jsonl"
    ev = json.loads((run_dir / "stages" / "evaluate" / "done.json").read_text())
    summary, bon = ev["summary"], ev.get("best_of_n_curve", {})
    has_curves = plot_learning_curves(run, run_dir / "learning_curves.png")
    plot_gold_vs_kl(summary, bon, run_dir / "gold_vs_kl.png")
    from rlxf.lab.pipeline import format_table

    stage_rows = []
    for done in sorted((run_dir / "stages").glob("*/done.json")):
        result = json.loads(done.read_text())
        result.pop("summary", None)
        result.pop("best_of_n_curve", None)
        stage_rows.append(f"<tr><td>{done.parent.name}</td><td><code>{html.escape(json.dumps(result))}</code></td></tr>")
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>rlxf run {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
pre{{background:#f5f5f5;padding:1em}} td{{padding:2px 8px;vertical-align:top}} img{{max-width:100%}}</style></head><body>
<h1>rlxf run: {html.escape(str(run_dir))}</h1>
<h2>Results on held-out prompts</h2>
<p>Gold reward is the task's hidden objective (never seen by the learners); proxy is the learned reward model.
Gains are paired differences against the SFT policy on the same prompts (mean ± standard error).</p>
<pre>{html.escape(format_table(summary))}</pre>
<h2>Gold reward against KL</h2><img src="gold_vs_kl.png" alt="gold vs KL">
{'<h2>Learning curves</h2><img src="learning_curves.png" alt="learning curves">' if has_curves else ''}
<h2>Stages</h2><table>{''.join(stage_rows)}</table>
<h2>Config</h2><pre>{html.escape((run_dir / 'config.toml').read_text())}</pre>
</body></html>"""
    path = run_dir / "report.html"
    atomic_write_text(path, body)
    return path
