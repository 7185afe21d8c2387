"""Shared benchmark plumbing: memory measurement, result tables and files."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


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
    path.write_text("\n".join(md))
    (RESULTS / f"{name}.json").write_text(json.dumps({"environment": env, **data}, indent=1))
    return path
