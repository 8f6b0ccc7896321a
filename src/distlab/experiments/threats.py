"""privacy.png and robustness.png: what privacy and attacks cost a run (matplotlib on the Agg
canvas, no pyplot).

privacy.png is the privacy-utility curve of DP-FedAvg (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models"): final accuracy against epsilon at the
run's delta, one line per setting the runs differ in other than the noise multiplier, each
point labelled by its noise multiplier. A run without privacy (or with noise 0) has no finite
epsilon: it stands at the right edge, marked "no DP", rather than being left out.

robustness.png: final accuracy and the backdoor's success rate against the fraction of
attacking clients, one line per aggregator, a row of panels per attack kind; the runs
without an attack are every line's point at fraction 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from distlab.config_threats import ATTACKS
from distlab.experiments.scaling import flatten, series_labels
from distlab.plots import check_plot, class_colors, new_figure, save_figure

# The table columns of privacy and attacks, with the console's short headers.
THREAT_COLUMNS = {
    "epsilon": "epsilon",
    "attack": "attack",
    "attack_fraction": "attackers",
    "aggregator": "aggregator",
    "attack_success": "attack success",
}
NO_DP = "no DP"
# How far right of the largest finite epsilon the runs without one stand (log axis).
EDGE = 3.0
# Keys that make no line of their own: the axis of each figure and the repeats.
PRIVACY_AXIS = ("privacy.noise", "privacy.target_epsilon")


def flat_config(run: dict[str, Any]) -> dict[str, Any]:
    return flatten(run.get("config") or {})


def attacking(run: dict[str, Any]) -> bool:
    """Whether some client or rank of the run attacked (an attack kind and a fraction > 0)."""
    flat = flat_config(run)
    kind = flat.get("attack.kind") or run["summary"].get("attack") or "none"
    return kind != "none" and (flat.get("attack.fraction") or 0) > 0


def private(run: dict[str, Any]) -> bool:
    mode = run["summary"].get("privacy") or flat_config(run).get("privacy.mode") or "none"
    return mode != "none"


def finite(value: Any) -> float | None:
    """A number that is finite, else None (an epsilon of infinity is no privacy at all)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def attack_kind(run: dict[str, Any]) -> str:
    return str(flat_config(run).get("attack.kind") or run["summary"].get("attack") or "none")


def attack_fraction(run: dict[str, Any]) -> float:
    """The configured fraction of attackers; 0 for a run without an attack."""
    return float(flat_config(run).get("attack.fraction") or 0) if attacking(run) else 0.0


def aggregator(run: dict[str, Any]) -> str | None:
    return flat_config(run).get("strategy.aggregator")


def row_figures(run: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The privacy and attack columns of a run's comparison row. The attack and its
    fraction are given for every run when some run of the report attacks (a clean run is
    'none' at 0), the aggregator when some run attacks or the aggregators differ."""
    s = run["summary"]
    attacked = any(attacking(r) for r in runs)
    aggregators = {aggregator(r) for r in runs}
    return {
        "epsilon": finite(s.get("epsilon")),
        "attack": attack_kind(run) if attacked else None,
        "attack_fraction": attack_fraction(run) if attacked else None,
        "aggregator": aggregator(run) if attacked or len(aggregators) > 1 else None,
        "attack_success": s.get("attack_success"),
    }


# --- privacy.png ------------------------------------------------------------------------------


def noise_label(run: dict[str, Any]) -> str:
    """'z=0.6' for a private run, 'no DP' for one without privacy."""
    if not private(run):
        return NO_DP
    return f"z={float(flat_config(run).get('privacy.noise') or 0):g}"


def strip(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The config without the dotted `keys` (a copy of the sections it touches)."""
    out = dict(config)
    for key in keys:
        section, _, name = key.partition(".")
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


def privacy_lines(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{line: points} of privacy.png: a line per setting the runs differ in other than the
    noise; a point per noise multiplier (the median epsilon and final accuracy over its
    repeats), {label, epsilon (None: no finite epsilon), accuracy}, finite epsilons in
    increasing order and the runs without one last."""
    done = [r for r in runs if r["summary"].get("final_accuracy") is not None]
    labels = series_labels([strip(r.get("config") or {}, PRIVACY_AXIS) for r in done])
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run, line in zip(done, labels, strict=True):
        grouped[line][noise_label(run)].append(run)
    return {line: sorted_points(by_noise) for line, by_noise in grouped.items()}


def sorted_points(by_noise: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    points = []
    for label, group in by_noise.items():
        eps = [finite(r["summary"].get("epsilon")) for r in group]
        known = [e for e in eps if e is not None]
        points.append(
            {
                "label": label,
                # a private run of noise 0 has no finite epsilon either: it joins "no DP"
                "epsilon": float(np.median(known)) if known else None,
                "accuracy": float(np.median([r["summary"]["final_accuracy"] for r in group])),
            }
        )
    return sorted(points, key=lambda p: (p["epsilon"] is None, p["epsilon"] or 0.0))


def plot_privacy(runs: list[dict[str, Any]], path: str | Path) -> Path | None:
    """privacy.png: final accuracy against epsilon (log), a line per setting, points
    labelled by noise multiplier; None (nothing written) when no run was private."""
    path = check_plot(path)
    lines = privacy_lines(runs)
    if not any(private(r) for r in runs) or not lines:
        return None
    eps = [p["epsilon"] for pts in lines.values() for p in pts if p["epsilon"] is not None]
    edge = max(eps) * EDGE if eps else 10.0
    fig = new_figure(7.5, 5.4)
    ax = fig.subplots()
    seen: list[tuple[float, float]] = []
    for (line, points), color in zip(lines.items(), class_colors(len(lines)), strict=True):
        xs = [edge if p["epsilon"] is None else p["epsilon"] for p in points]
        ys = [p["accuracy"] for p in points]
        ax.plot(xs, ys, color=color, marker="o", ms=5, label=line)
        for x, y, p in zip(xs, ys, points, strict=True):
            # labels of points at one spot (the edge, mostly) stacked, not overlaid
            above = 5 + 9 * sum(abs(x - sx) < 1e-9 * x and abs(y - sy) < 0.02 for sx, sy in seen)
            seen.append((x, y))
            ax.annotate(
                p["label"], (x, y), xytext=(4, above), textcoords="offset points", fontsize=7
            )
    ax.set_xscale("log")
    ax.axvline(edge, color="0.6", ls=":", lw=1)
    ax.text(edge, 0.98, " epsilon = inf", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.margins(x=0.1)
    ax.set(xlabel="epsilon at the runs' delta (log; no DP at the right edge)")
    ax.set(ylabel="final test accuracy", title="Accuracy against privacy (points: noise z)")
    finish(ax)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


# --- robustness.png ---------------------------------------------------------------------------


def line_labels(runs: list[dict[str, Any]]) -> list[str]:
    """A line per aggregator (the strategy's name where it has none), with the other
    settings the runs differ in when they differ in more than the attack."""
    rest_configs = []
    for run in runs:
        config = {k: v for k, v in (run.get("config") or {}).items() if k != "attack"}
        rest_configs.append(strip(config, ("strategy.aggregator",)))
    rest = series_labels(rest_configs)
    names = [aggregator(r) or str(flat_config(r).get("strategy.name", "?")) for r in runs]
    if len(set(rest)) > 1:
        return [f"{name} ({other})" for name, other in zip(names, rest, strict=True)]
    return names


def robustness_panels(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple]]]:
    """{attack kind: {line: [(fraction, accuracy, success), ...]}} of robustness.png, by
    fraction: the median final accuracy and attack success (None: not measured) over the
    runs at that fraction. The runs without an attack are each line's fraction 0 in every
    attack kind's panels."""
    done = [r for r in runs if r["summary"].get("final_accuracy") is not None]
    if not done:
        return {}
    labels = line_labels(done)
    kinds = sorted({attack_kind(r) for r in done if attacking(r)}, key=ATTACKS.index)
    cells: dict[str, dict[str, dict[float, list]]] = {
        k: defaultdict(lambda: defaultdict(list)) for k in kinds
    }
    for run, line in zip(done, labels, strict=True):
        shown = [attack_kind(run)] if attacking(run) else kinds
        for kind in shown:
            cells[kind][line][attack_fraction(run)].append(run["summary"])
    return {
        kind: {line: medians(by_x) for line, by_x in lines.items()} for kind, lines in cells.items()
    }


def medians(by_fraction: dict[float, list[dict[str, Any]]]) -> list[tuple]:
    points = []
    for fraction in sorted(by_fraction):
        summaries = by_fraction[fraction]
        acc = float(np.median([s["final_accuracy"] for s in summaries]))
        known = [s["attack_success"] for s in summaries if s.get("attack_success") is not None]
        points.append((fraction, acc, float(np.median(known)) if known else None))
    return points


# Markers per line, so lines that lie on one another (aggregators that agree) stay visible.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def panel_slots(panels: dict[str, dict[str, list[tuple]]]) -> list[tuple[str, str] | None]:
    """The panels in a two-column grid, as (what, kind): an accuracy panel for every attack
    kind, a success panel beside it only where some run measured a success rate (the
    backdoor); kinds without one first, two to a row, None for an empty slot."""
    measured = [
        k for k, by in panels.items() if any(p[2] is not None for v in by.values() for p in v)
    ]
    slots: list[tuple[str, str] | None] = [("acc", k) for k in panels if k not in measured]
    if len(slots) % 2:
        slots.append(None)
    for kind in measured:
        slots += [("acc", kind), ("hit", kind)]
    return slots


def plot_robustness(runs: list[dict[str, Any]], path: str | Path) -> Path | None:
    """robustness.png: final accuracy (and, for the backdoor, its success rate) against the
    fraction of attackers, a panel per attack kind, a line per aggregator; None (nothing
    written) without an attack."""
    path = check_plot(path)
    panels = robustness_panels(runs)
    if not panels:
        return None
    lines = sorted({line for by_line in panels.values() for line in by_line})
    styles = {
        line: (color, MARKERS[i % len(MARKERS)])
        for i, (line, color) in enumerate(zip(lines, class_colors(len(lines)), strict=True))
    }
    slots = panel_slots(panels)
    fig = new_figure(10.0, 2.9 * (len(slots) // 2) + 0.8)
    for ax, slot in zip(fig.subplots(len(slots) // 2, 2, squeeze=False).flat, slots, strict=True):
        if slot is None:
            ax.set_axis_off()
        else:
            draw_panel(ax, slot[0], slot[1], panels[slot[1]], styles)
    handles = [Line2D([], [], color=c, marker=m, ms=5, label=n) for n, (c, m) in styles.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    return save_figure(fig, path)


def draw_panel(ax: Axes, what: str, kind: str, by_line: dict, styles: dict) -> None:
    """One attack kind's accuracy ("acc") or attack success ("hit") against the fraction of
    attackers, a line per aggregator (points where the figure is unknown left out)."""
    column = 1 if what == "acc" else 2
    for line, points in by_line.items():
        known = [(p[0], p[column]) for p in points if p[column] is not None]
        if known:
            color, marker = styles[line]
            ax.plot(*zip(*known, strict=True), color=color, marker=marker, ms=4, alpha=0.85)
    fractions = sorted({p[0] for points in by_line.values() for p in points})
    label = "final test accuracy" if what == "acc" else "attack success"
    ax.set(ylabel=label, title=f"{kind}: {label}", xlabel="fraction of attackers")
    ax.set_xticks(fractions)
    ax.set_xlim(fractions[0] - 0.03, fractions[-1] + 0.03)
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
    finish(ax)


def finish(ax: Axes) -> None:
    """Grid, and the y axis (an accuracy or a rate) within [0, 1.02]."""
    ax.grid(alpha=0.3, which="both")
    ax.set_ylim(0.0, 1.02)
