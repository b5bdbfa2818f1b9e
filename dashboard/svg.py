"""Small inline SVG line plots: the page needs no script and fetches nothing.

A plot is a string of SVG markup (text escaped), with one ``<polyline>`` per series that
has points, a marker per point, axis ticks at the ends and a legend. The y range is
[0, 1] for metrics (as in metrics.png) or [0, max] for durations.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from dashboard.view import Series

WIDTH, HEIGHT = 320, 180
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 10, 44  # margins: tick labels left, legend below
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _tick(value: float) -> str:
    return f"{value:.3g}"


def line_plot(
    series: Sequence[Series],
    *,
    title: str,
    y_range: tuple[float, float] | None = None,
    x_label: str = "round",
) -> str:
    """An SVG plot of ``series`` (x: rounds); ``y_range`` None: from 0 to the largest y."""
    points = [p for s in series for p in s.points]
    xs = [x for x, _ in points] or [1.0]
    x_low, x_high = min(xs), max(max(xs), min(xs) + 1)
    if y_range is None:
        y_range = (0.0, max([y for _, y in points] + [1e-9]) * 1.1)
    y_low, y_high = y_range
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        y = min(max(y, y_low), y_high)
        return (
            LEFT + (x - x_low) / (x_high - x_low) * inner_w,
            TOP + (1 - (y - y_low) / (y_high - y_low or 1)) * inner_h,
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" class="frame"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 4}" class="tick" text-anchor="end">{_tick(y_high)}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + inner_h}" class="tick" text-anchor="end">'
        f"{_tick(y_low)}</text>",
        f'<text x="{LEFT}" y="{TOP + inner_h + 12}" class="tick">{_tick(x_low)}</text>',
        f'<text x="{LEFT + inner_w}" y="{TOP + inner_h + 12}" class="tick" text-anchor="end">'
        f"{_tick(x_high)}</text>",
        f'<text x="{LEFT + inner_w / 2}" y="{TOP + inner_h + 12}" class="tick" '
        f'text-anchor="middle">{escape(x_label)}</text>',
    ]
    for i, line in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        placed = [at(x, y) for x, y in line.points]
        if len(placed) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in placed)
            parts.append(f'<polyline class="series" points="{path}" stroke="{colour}"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in placed]
        legend_y = TOP + inner_h + 24 + 10 * (i % 2)
        legend_x = LEFT + (inner_w / 2) * (i // 2 % 2)
        parts.append(
            f'<text x="{legend_x}" y="{legend_y}" class="legend" fill="{colour}">'
            f"{escape(line.label)}</text>"
        )
    if not points:
        parts.append(
            f'<text x="{LEFT + inner_w / 2}" y="{TOP + inner_h / 2}" class="tick" '
            'text-anchor="middle">no values yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
