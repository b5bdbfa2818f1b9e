"""The dashboard's one page as HTML, from :class:`dashboard.view.PageData`.

Server-rendered and self-contained: the style is inline, the plots are inline SVG, and the
page reloads itself with ``<meta http-equiv="refresh">``, so it runs no script and needs
nothing from the internet. Every text that came from a site (its name, its task names, a
rejection's reason) is HTML-escaped here, in one place.
"""

from __future__ import annotations

import time
from html import escape

from dashboard.svg import line_plot
from dashboard.view import PageData, SiteRow

MAX_EVENTS = 50  # the newest; a long run's full history is in the log and report.json

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:3px 7px}
th{background:#f0f0f0;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.row{display:flex;flex-wrap:wrap;gap:0 24px;align-items:flex-start}
.status{font-weight:bold;padding:1px 6px;border-radius:3px;background:#ddd}
.status-running{background:#cde8ff} .status-completed{background:#cfeccf}
.status-failed{background:#f6cccc} .yes{color:#17702a} .no{color:#999} .bad{color:#b00020}
.plots{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;background:#fff;border:1px solid #ddd}
figcaption{font-size:12px;padding:2px 6px;background:#f0f0f0}
.frame{fill:none;stroke:#bbb} .series{fill:none;stroke-width:1.5}
.tick,.legend{font-size:10px} .tick{fill:#666} .muted{color:#777}
dl{display:grid;grid-template-columns:max-content auto;gap:0 12px;margin:0;align-content:start}
dt{color:#666} dd{margin:0} #run{display:flex;flex-wrap:wrap;gap:8px 48px}
#sites th[scope=row]{white-space:nowrap}
"""


def duration(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 07 s', '12 s'; '?' when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def size(n: int) -> str:
    """Bytes in binary units, e.g. '19.5 MiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def clock(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def ago(epoch: float | None, now: float) -> str:
    return f"{duration(now - epoch)} ago" if epoch else "never"


def _site_row(row: SiteRow, now: float) -> str:
    state = '<span class="yes">connected</span>' if row.connected else '<span class="no">-</span>'
    if row.not_sampled:
        state = '<span class="yes">connected</span>, not sampled this round'
    if row.epsilon is None:
        epsilon = '<span class="muted">no DP</span>'
    else:
        target = f" / {row.epsilon_target:.3g}" if row.epsilon_target is not None else ""
        epsilon = f"{row.epsilon:.3g}{target}<br><span class='muted'>{escape(row.privacy)}</span>"
    refused = str(row.refused)
    if row.refused:
        refused = f'<span class="bad">{row.refused}</span>: {escape(row.refusal_class)}'
    cells = [
        f'<th scope="row">{escape(row.name)}</th>',
        f'<td class="num">{escape(row.node)}</td>',
        f"<td>{escape(row.tasks) or '-'}</td>",
        f"<td>{state}<br><span class='muted'>last seen {ago(row.last_seen, now)}</span></td>",
        f'<td class="num">{row.rounds_trained}</td>',
        f"<td>{refused}</td>",
        f'<td class="num">{epsilon}</td>',
        f'<td class="num">{size(row.bytes_to_site)}</td>',
        f'<td class="num">{size(row.bytes_from_site)}</td>',
    ]
    return f'<tr class="site" data-site="{escape(row.name)}">{"".join(cells)}</tr>'


def render_page(data: PageData, *, now: float, refresh: int, source: str) -> str:
    """The whole page; it reloads every ``refresh`` seconds while the run is running."""
    run = data.run
    progress = f"round {run.completed_rounds} of {run.total_rounds} done"
    if run.running_round is not None:
        progress += f", round {run.running_round} running"
    remaining = "-"
    if run.status == "running":
        remaining = "due now" if run.remaining == 0 else duration(run.remaining)
    facts = [
        ("status", f'<span class="status status-{escape(run.status)}">{escape(run.status)}</span>'),
        ("progress", progress),
        ("elapsed", duration(run.elapsed)),
        ("estimated remaining", remaining),
        ("last update", f"{clock(run.updated)} ({ago(run.updated, now)})"),
        ("run key", escape(run.run_key) or "-"),
    ]
    recipe = [(escape(label), escape(value)) for label, value in run.recipe]
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>umedpt-fl: {escape(run.status)}, round {run.completed_rounds}/"
        f"{run.total_rounds}</title>",
    ]
    if run.status == "running" and refresh > 0:
        head.append(f'<meta http-equiv="refresh" content="{refresh}">')
    head.append(f"<style>{STYLE}</style></head><body>")
    body = [
        "<h1>umedpt-fl federation</h1>",
        f'<p class="muted">{escape(source)}, read-only; '
        + (f"refreshes every {refresh} s" if run.status == "running" else "the run has ended")
        + "</p>",
        '<section id="run"><dl id="progress">',
        *(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts),
        '</dl><dl id="recipe">',
        *(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in recipe),
        "</dl></section>",
        *(f'<p class="bad">{escape(note)}</p>' for note in data.notes),
        *(
            [
                f'<p class="bad" id="stale">no update for {duration(now - run.updated)}, longer '
                "than the round's deadlines: is the coordinator still running?</p>"
            ]
            if run.stale and run.updated
            else []
        ),
        '<h2>Sites</h2><table id="sites"><thead><tr><th>site</th><th>node</th><th>tasks</th>'
        "<th>connection</th><th>rounds trained</th><th>refused replies</th>"
        "<th>epsilon spent / target</th><th>bytes to site</th><th>bytes from site</th>"
        "</tr></thead><tbody>",
        *(_site_row(row, now) for row in data.sites),
        "</tbody></table>",
    ]
    if not data.sites:
        body.append('<p class="muted">no site has joined yet</p>')
    body.append('<h2>Validation metric per site</h2><div class="plots" id="metric-plots">')
    for site, series in data.metric_plots.items():
        plot = line_plot(series, title=f"{site}: validation metric", y_range=(0.0, 1.0))
        body.append(f"<figure><figcaption>{escape(site)}</figcaption>{plot}</figure>")
    plot = line_plot([data.round_times], title="seconds per round")
    extra = []
    if data.traffic:
        traffic = line_plot(data.traffic, title="bytes per round")
        extra.append(f"<figure id='traffic'><figcaption>bytes per round (down, up)</figcaption>"
                     f"{traffic}</figure>")  # fmt: skip
    if data.participation:
        sites = line_plot(data.participation, title="sites per round")
        extra.append(f"<figure id='participation'><figcaption>sites trained / available per "
                     f"round</figcaption>{sites}</figure>")  # fmt: skip
    body += [
        '</div><div class="row"><section><h2>Round times</h2>',
        f"<figure id='round-times'><figcaption>seconds per round</figcaption>{plot}</figure>",
        *extra,
        '</section><section><h2>Events</h2><table id="events"><thead><tr><th>time</th>'
        "<th>round</th><th>event</th><th>site</th><th>detail</th></tr></thead><tbody>",
    ]
    for event in data.events[:MAX_EVENTS]:
        body.append(
            f'<tr class="event event-{escape(event.kind)}"><td>{clock(event.time)}</td>'
            f'<td class="num">{event.round}</td><td>{escape(event.kind)}</td>'
            f"<td>{escape(event.site)}</td><td>{escape(event.detail)}</td></tr>"
        )
    if len(data.events) > MAX_EVENTS:
        older = len(data.events) - MAX_EVENTS
        body.append(f'<tr><td colspan="5" class="muted">{older} older events: see the '
                    "coordinator's log or report.json</td></tr>")  # fmt: skip
    body.append("</tbody></table></section></div></body></html>")
    return "\n".join(head + body)


def render_waiting(message: str, *, refresh: int, source: str) -> str:
    """The page before the run has written its first state (or when it cannot be read)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>umedpt-fl: waiting</title>"
        f'<meta http-equiv="refresh" content="{max(refresh, 1)}"><style>{STYLE}</style></head>'
        f'<body><h1>umedpt-fl federation</h1><p class="muted">{escape(source)}</p>'
        f'<p id="waiting">{escape(message)}</p></body></html>'
    )
