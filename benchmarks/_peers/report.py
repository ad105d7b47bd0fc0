"""Markdown tables and matplotlib plots (Agg) of the peers benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import Score


def _ratio(score: Score, ours: Score) -> str:
    if not score.seconds or not ours.seconds:
        return ""
    return f"{np.median(score.seconds) / np.median(ours.seconds):.3g}"


def _seconds(score: Score) -> str:
    return f"{np.median(score.seconds):.3g}" if score.seconds else ""


def _table(table: dict[str, Score], ours: str, columns: list[tuple[str, object]]) -> str:
    """One row per tool that ran: ``columns`` are (header, cell function of a Score)."""
    heads = ["tool", *(h for h, _ in columns), "seconds", "time vs ours"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for score in table.values():
        if score.error:
            cells = [f"failed: {score.error[:90]}"] + [""] * (len(heads) - 2)
        elif score.seconds:
            cells = [cell(score) for _, cell in columns]
            cells += [_seconds(score), _ratio(score, table[ours])]
        else:
            continue
        lines.append(f"| {score.tool} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(key: str, worst: bool = False):
    return lambda s: f"{100 * (s.worst(key) if worst else s.median(key)):.2f} %"


def _number(key: str, worst: bool = False):
    return lambda s: f"{s.worst(key) if worst else s.median(key):.2f}"


def normalization_table(table: dict[str, Score], ours: str) -> str:
    """Scale error and residual gradient per tool (simulated sequences)."""
    return _table(table, ours, [
        ("median scale error", _percent("scale_error")),
        ("worst", _percent("scale_error", worst=True)),
        ("median residual gradient / sigma", _number("residual")),
        ("worst", _number("residual", worst=True))])


def real_table(table: dict[str, Score], ours: str) -> str:
    """Scale against photutils stars and background difference before/after (real frames)."""
    return _table(table, ours, [
        ("median scale difference to photutils stars", _percent("scale_diff")),
        ("worst", _percent("scale_diff", worst=True)),
        ("background difference before (median ADU)", _number("before")),
        ("after (median ADU)", _number("after")),
        ("worst after", _number("after", worst=True))])


def gradient_table(tables: dict[str, dict[str, Score]], ours: str) -> str:
    """Gradient left / nebula kept per tool (rows) and nebula size (columns), with times."""
    sizes = list(tables)
    lines = ["| tool | " + " | ".join(f"{s}: left / kept" for s in sizes) + " | seconds | time vs ours |",
             "|---|" + "---|" * (len(sizes) + 2)]
    tools = list(next(iter(tables.values())))
    for tool in tools:
        cells = [_gradient_cell(tables[size][tool], tool == "before") for size in sizes]
        merged = Score(tool, seconds=[s for size in sizes for s in tables[size][tool].seconds])
        ours_all = Score(ours, seconds=[s for size in sizes for s in tables[size][ours].seconds])
        name = "no correction" if tool == "before" else tool
        secs = "" if tool == "before" else _seconds(merged)
        ratio = "" if tool == "before" else _ratio(merged, ours_all)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs} | {ratio} |")
    return "\n".join(lines)


def _gradient_cell(score: Score, before: bool) -> str:
    """``left / kept``; "kept" means nothing before a correction (the gradient mixes in)."""
    if score.error:
        return f"failed: {score.error[:60]}"
    if not score.values:
        return ""
    kept = "-" if before else f"{score.median('kept'):.2f}"
    return f"{score.median('left'):.2f} / {kept}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gradient(tables: dict[str, dict[str, Score]], key: str, ylabel: str, path: Path,
                  ideal: float, ylim: tuple[float, float]) -> None:
    """One line per tool across nebula sizes (values outside ``ylim`` run off the plot)."""
    plt = _pyplot()
    sizes = list(tables)
    fig, ax = plt.subplots(figsize=(9.5, 4.2), dpi=100)
    palette = plt.get_cmap("tab20").colors
    for k, tool in enumerate(tables[sizes[0]]):
        if tool == "before" and key == "kept":
            continue
        ys = [tables[s][tool].median(key) for s in sizes]
        if np.all(np.isnan(ys)):
            continue
        style = {"marker": "o", "lw": 1.2, "color": palette[k % len(palette)], "label": tool}
        if tool.startswith("ours"):
            style.update(lw=3, color="black")
        elif tool == "before":
            style.update(ls="--", color="grey", label="no correction")
        ax.plot(range(len(sizes)), ys, **style)
    ax.axhline(ideal, color="grey", lw=0.8)
    ax.set_ylim(*ylim)
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_xlabel("nebula size")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_normalization(table: dict[str, Score], path: Path) -> None:
    """Median scale error and residual gradient per tool (log scale bars)."""
    plt = _pyplot()
    tools = [t for t, s in table.items() if s.values]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for ax, key, label, factor in ((axes[0], "scale_error", "median scale error (%)", 100),
                                   (axes[1], "residual", "median residual gradient (sigma)", 1)):
        vals = [factor * table[t].median(key) for t in tools]
        colors = ["black" if t.startswith("ours") else "tab:blue" for t in tools]
        ax.barh(range(len(tools)), vals, color=colors)
        ax.set_yticks(range(len(tools)), tools, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
