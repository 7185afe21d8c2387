"""Shared benchmark plumbing: memory measurement, result tables and files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

# The committed reference results (the tests read some of them).
REFERENCE = Path(__file__).parent / "results"
# Where a run writes: an untracked folder unless ``--out`` says otherwise (pass
# ``--out benchmarks/results`` to update the references).
RESULTS = Path(__file__).parent / "out"


def peak_rss_delta_mb(fn) -> float | None:
    """Peak resident memory added while ``fn()`` runs, in MiB (Linux: the kernel's
    high-water mark is reset through /proc/self/clear_refs first). Frameworks keep
    freed blocks in their allocators, so this is an upper bound on the run's need."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kb("VmRSS")
        out = fn()
        for leaf in out if isinstance(out, (tuple, list)) else (out,):
            if hasattr(leaf, "block_until_ready"):
                leaf.block_until_ready()
        return max(0.0, (_status_kb("VmHWM") - before) / 1024)
    except OSError:
        return None


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def environment() -> dict:
    import jax
    import numpy
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "jax": jax.__version__,
        "numpy": numpy.__version__, "torch_threads": torch.get_num_threads(),
    }


def markdown_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write(name: str, title: str, sections: list[tuple[str, str]], data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment()
    md = [f"# {title}", "", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    for heading, body in sections:
        md += [f"## {heading}", "", body, ""]
    path = RESULTS / f"{name}.md"
    png = plot(RESULTS / f"{name}.png", title, sections)
    if png is not None:
        md.insert(3, f"![{title}]({png.name})\n")
    path.write_text("\n".join(md))
    (RESULTS / f"{name}.json").write_text(json.dumps({"environment": env, **data}, indent=1))
    return path


def _ratio(cell: str) -> float | None:
    """``"0.42x"`` -> 0.42; None for anything else."""
    cell = cell.strip()
    if not cell.endswith("x"):
        return None
    try:
        return float(cell[:-1])
    except ValueError:
        return None


def table_ratios(body: str) -> list[tuple[str, float]]:
    """``(label, ratio)`` per row of a markdown table whose last ratio-like column
    (cells such as ``0.42x``) gives the ratio; the label joins the other text
    cells that name the row (numbers and times left out)."""
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        return []
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    columns = [i for i in range(len(headers))
               if any(_ratio(r[i]) is not None for r in rows if i < len(r))]
    measured = [any(m in h for m in ("ms", " s", "MiB", "ratio", "/", "time")) for h in headers]
    if not columns:
        return _table_times(headers, rows, measured)
    col = columns[-1]
    out = []
    for r in rows:
        v = _ratio(r[col]) if col < len(r) else None
        if v is None or v <= 0:
            continue
        words = []
        for i, c in enumerate(r):
            if i == col or not c or measured[i]:
                continue
            words.append(f"{headers[i]} {c}" if _is_number(c) else c)
        out.append((" / ".join(words)[:70], v))
    return out


def _table_times(headers, rows, measured) -> list[tuple[str, float]]:
    """Without ratio cells: every time column (``... ms`` / ``... s``) of every row,
    labelled by the row and the column (the contenders side by side)."""
    times = [i for i, h in enumerate(headers) if h.endswith((" ms", " s"))]
    out = []
    for r in rows:
        name = " / ".join(f"{headers[i]} {c}" if _is_number(c) else c
                          for i, c in enumerate(r) if c and not measured[i]
                          and i not in times and not headers[i].endswith("colors"))
        for i in times:
            if i < len(r) and _is_number(r[i]) and float(r[i]) > 0:
                out.append((f"{name} / {headers[i]}"[:70], float(r[i])))
    return out


def _is_number(cell: str) -> bool:
    try:
        float(cell.rstrip("x"))
        return True
    except ValueError:
        return False


def plot(path: Path, title: str, sections: list[tuple[str, str]],
         keep=lambda heading: True) -> Path | None:
    """One horizontal bar chart per section with ratios (log axis, 1 marked),
    or None without matplotlib (``pip install matplotlib``: the bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plot: pip install matplotlib)")
        return None
    panels = [(h, r) for h, body in sections if keep(h) and (r := table_ratios(body))]
    if not panels:
        return None
    heights = [0.6 + 0.22 * len(r) for _, r in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (heading, rows) in zip(axes[:, 0], panels):
        labels, values = zip(*rows)
        derivs_table = "derivs" in heading.split("(")[0].lower() or all(
            "derivs" not in lb for lb in labels)  # a table of derivs' own ratios
        colors = ["tab:blue" if "derivs" in lb or derivs_table else "tab:gray"
                  for lb in labels]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(heading, fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{title} (ratios or times as in each table, log axis; derivs in blue)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replot(markdown: Path, png: Path, keep=lambda heading: True) -> Path | None:
    """The plot of a written result file (the tables of its ``##`` sections that
    ``keep`` accepts)."""
    text = markdown.read_text()
    title = text.splitlines()[0].lstrip("# ").strip()
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    sections = [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    return plot(png, title, sections, keep)
