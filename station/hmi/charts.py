"""Trend charts drawn on the server as SVG: bars (optionally stacked), lines, and a marker line.

No chart library and no JavaScript: the trends page embeds the SVG the server renders, which works
offline and under the HMI's strict content security policy (colours are SVG attributes, never inline
styles). Values that are None (an hour without parts) leave a gap.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

PALETTE = ("#2f6db5", "#d9822b", "#3a9a5b", "#c23b3b", "#8a5cc2", "#6b6b6b", "#c2a13b", "#3bb5c2")
W, H = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 44


def _frame(title: str, y_max: float, y_label: str) -> list[str]:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" '
             f'aria-label="{escape(title)}" class="chart">',
             f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>']
    for i in range(5):
        value = y_max * i / 4
        y = H - BOTTOM - (H - TOP - BOTTOM) * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#555">'
                     f'{value:.3g}</text>')
    parts.append(f'<text x="10" y="{TOP + (H - TOP - BOTTOM) / 2:.0f}" font-size="10" fill="#555" '
                 f'transform="rotate(-90 10 {TOP + (H - TOP - BOTTOM) / 2:.0f})" text-anchor="middle">'
                 f'{escape(y_label)}</text>')
    return parts


def _x_labels(labels: list[str], step_px: float) -> list[str]:
    every = max(1, int(len(labels) / max(1, (W - LEFT - RIGHT) / 60)))
    out = []
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + step_px * (i + 0.5)
            out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" font-size="10" text-anchor="middle" '
                       f'fill="#555">{escape(label)}</text>')
    return out


def _legend(names: list[str]) -> list[str]:
    out, x = [], LEFT
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{H - 16}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{H - 7}" font-size="10" fill="#333">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def _nice_max(values: list[float]) -> float:
    top = max([v for v in values if v is not None] or [0.0])
    return top * 1.1 if top > 0 else 1.0


def bar_chart(title: str, labels: list[str], series: dict[str, list[float | None]], *, y_label: str = "",
              y_max: float | None = None, stacked: bool = False, marker_x: float | None = None,
              marker_label: str = "") -> Markup:
    """Bars per label (side by side, or stacked); `marker_x` (0..1 of the x axis) draws a vertical line."""
    names = list(series)
    if not labels:
        return Markup(f'<p class="empty">{escape(title)}: no parts in this period.</p>')
    totals = [sum(series[n][i] or 0 for n in names) for i in range(len(labels))] if stacked else \
        [v for n in names for v in series[n] if v is not None]
    top = y_max if y_max is not None else _nice_max(totals)
    parts = _frame(title, top, y_label)
    step = (W - LEFT - RIGHT) / len(labels)
    plot_h = H - TOP - BOTTOM
    for i in range(len(labels)):
        base = 0.0
        for k, name in enumerate(names):
            value = series[name][i]
            if value is None:
                continue
            colour = PALETTE[k % len(PALETTE)]
            if stacked:
                x, width = LEFT + step * i + step * 0.1, step * 0.8
                y0 = base
                base += value
            else:
                width = step * 0.8 / len(names)
                x, y0 = LEFT + step * i + step * 0.1 + width * k, 0.0
            y_top = H - BOTTOM - plot_h * min(1.0, (y0 + value) / top)
            y_bot = H - BOTTOM - plot_h * min(1.0, y0 / top)
            parts.append(f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{max(width, 0.5):.1f}" '
                         f'height="{max(0.0, y_bot - y_top):.1f}" fill="{colour}"><title>{escape(labels[i])} '
                         f'{escape(name)}: {value:g}</title></rect>')
    if marker_x is not None:
        x = LEFT + (W - LEFT - RIGHT) * marker_x
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#c23b3b" '
                     f'stroke-width="2" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x + 4:.1f}" y="{TOP + 10}" font-size="10" fill="#c23b3b">{escape(marker_label)}</text>')
    parts += _x_labels(labels, step)
    if len(names) > 1 or stacked:
        parts += _legend(names)
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(title: str, labels: list[str], series: dict[str, list[float | None]], *,
               y_label: str = "", y_max: float | None = None) -> Markup:
    names = list(series)
    if not labels:
        return Markup(f'<p class="empty">{escape(title)}: no parts in this period.</p>')
    top = y_max if y_max is not None else _nice_max([v for n in names for v in series[n] if v is not None])
    parts = _frame(title, top, y_label)
    step = (W - LEFT - RIGHT) / len(labels)
    plot_h = H - TOP - BOTTOM
    for k, name in enumerate(names):
        colour = PALETTE[k % len(PALETTE)]
        points = []
        for i, value in enumerate(series[name]):
            if value is None:
                continue
            x = LEFT + step * (i + 0.5)
            y = H - BOTTOM - plot_h * min(1.0, value / top)
            points.append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{escape(labels[i])} '
                         f'{escape(name)}: {value:.3g}</title></circle>')
        if len(points) > 1:
            parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2"/>')
    parts += _x_labels(labels, step)
    parts += _legend(names)
    parts.append("</svg>")
    return Markup("".join(parts))
