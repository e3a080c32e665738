"""The report shell every lab fills: ``report.html`` with the lab's sections, each stage's
result and the run's config, plus the helpers the labs draw their plots and tables with.

Every file is written atomically, so a report is whole or absent, never half of one.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlxf.core.runs import Run, atomic_write_bytes, atomic_write_text  # noqa: E402

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
pre{background:#f5f5f5;padding:1em} td,th{padding:2px 8px;vertical-align:top;text-align:left} img{max-width:100%}"""


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as a PNG at ``path`` and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def smooth(ys: list[float], k: int = 10) -> list[float]:
    """Trailing moving average over ``k`` points (fewer at the start)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_metric_panels(run: Run, curves: list[tuple[str, str]], path: Path) -> bool:
    """One panel per (stage, metric) of ``curves`` that the run logged, against step; False
    (and no file) when it logged none of them."""
    rows = run.metrics()
    panels = [(s, m) for s, m in curves if any(r["stage"] == s and m in r for r in rows)]
    if not panels:
        return False
    cols = 3
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (stage, metric) in zip(axes.flat, panels):
        pts = [(r["step"], r[metric]) for r in rows if r["stage"] == stage and metric in r]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, alpha=0.3, color="C0")
        ax.plot(xs, smooth(ys), color="C0")
        ax.set_title(f"{stage}: {metric}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Learning curves (faint: per step; solid: moving average of 10)")
    save_figure(fig, path)
    return True


# -- pieces of a page: each returns HTML, with every text escaped --------------------------
def heading(text: str) -> str:
    return f"<h2>{html.escape(text)}</h2>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def image(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'


def bullets(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in items) + "</ul>"


def table(rows: list[list], header: list[str] | None = None, code: bool = False) -> str:
    """An HTML table of ``rows`` (cells shown with ``str``); ``code`` sets the cells in monospace."""
    wrap = "<td><code>{}</code></td>" if code else "<td>{}</td>"
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    return "<table>" + head + "".join("<tr>" + "".join(wrap.format(html.escape(str(v))) for v in r) + "</tr>" for r in rows) + "</table>"


def stage_results(run: Run, leave_out: tuple[str, ...] = ("summary", "best_of_n_curve", "online_summary")) -> str:
    """Each finished stage's ``done.json``, less the bulky keys already shown as the summary."""
    rows = []
    for done in sorted((run.dir / "stages").glob("*/done.json")):
        result = {k: v for k, v in json.loads(done.read_text()).items() if k not in leave_out}
        rows.append([done.parent.name, json.dumps(result)])
    return table(rows, code=True)


def write_page(run: Run, title: str, sections: list[str]) -> Path:
    """``report.html`` of ``run``: ``title``, the lab's ``sections`` (HTML), each stage's result
    and the config the run was made with."""
    body = "\n".join([
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>", *sections,
        heading("Stages"), stage_results(run),
        heading("Config"), pre((run.dir / "config.toml").read_text()), "</body></html>",
    ])
    path = run.dir / "report.html"
    atomic_write_text(path, body)
    return path
