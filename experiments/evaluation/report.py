"""Self-contained HTML reports a reviewer can attach to an adoption decision:
one page, inline CSS and SVG charts, no script and no network asset.

`render_run_report` shows one evaluation run (every metric, per-category
charts, the judge and the files measured); `render_gate_report` shows a
candidate beside the baseline it is gated against, with each threshold's verdict."""

from __future__ import annotations

import html
from collections import defaultdict

_BAR_W, _ROW_H, _LABEL_W = 260, 18, 220
_COLOURS = ("#1f6feb", "#d29922", "#8250df")


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def _groups(metrics: dict[str, float]) -> dict[str, dict[str, str]]:
    """chart title -> {row label: metric key}: one chart per (kind, metric) across
    categories (category.*.exact_match, safety.*.harmful_rate, suite.*.M)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for k in sorted(metrics):
        parts = k.split(".")
        if len(parts) == 3 and parts[0] in ("category", "safety", "suite"):
            out[f"{parts[0]} · {parts[2]}"][parts[1]] = k
    return dict(out)


def bar_chart(title: str, rows: dict[str, str], series: list[tuple[str, dict[str, float]]]) -> str:
    """An inline SVG horizontal bar chart: one group of bars per row label, one bar
    per series (candidate, baseline), scaled to the largest value (at least 1)."""
    values = [s.get(k) for _, s in series for k in rows.values()]
    top = max([v for v in values if v is not None] + [1.0])
    n = len(series)
    height = len(rows) * (n * _ROW_H + 8) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LABEL_W + _BAR_W + 70}" height="{height}" '
        f'role="img" aria-label="{_esc(title)}">',
        f'<text x="0" y="14" font-size="13" font-weight="bold">{_esc(title)}</text>',
    ]
    y = 24
    for label, key in rows.items():
        parts.append(f'<text x="0" y="{y + _ROW_H - 5}" font-size="12">{_esc(label)}</text>')
        for i, (name, s) in enumerate(series):
            v = s.get(key)
            w = 0 if v is None else max(1, int(_BAR_W * max(v, 0) / top))
            parts.append(
                f'<rect x="{_LABEL_W}" y="{y}" width="{w}" height="{_ROW_H - 4}" fill="{_COLOURS[i % 3]}">'
                f"<title>{_esc(name)}: {_esc(key)} = {_fmt(v)}</title></rect>"
            )
            parts.append(f'<text x="{_LABEL_W + w + 4}" y="{y + _ROW_H - 6}" font-size="11">{_fmt(v)}</text>')
            y += _ROW_H
        y += 8
    parts.append("</svg>")
    return "".join(parts)


_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}"
    ".fail{color:#b00;font-weight:bold}.pass{color:#070}.charts svg{margin:1em 2em 1em 0}"
)


def _page(title: str, body: list[str]) -> str:
    return (
        f'<!DOCTYPE html><html lang="ja"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_esc(title)}</h1>{''.join(body)}</body></html>\n"
    )


def _legend(series: list[tuple[str, dict]]) -> str:
    return (
        "<p>"
        + " ".join(
            f'<span style="color:{_COLOURS[i % 3]}">■</span> {_esc(name)}'
            for i, (name, _) in enumerate(series)
        )
        + "</p>"
    )


def render_run_report(result) -> str:
    """The HTML page of one evaluation result (an `EvalResult`)."""
    m = result.metrics
    series = [(result.model_version or result.served_as, m)]
    body = [
        f"<p>Eval set <b>{_esc(result.eval_set)}</b>, model version <b>{_esc(result.model_version)}</b> "
        f"(served as {_esc(result.served_as)}).</p>"
    ]
    if result.judge:
        j = result.judge
        body.append(
            f"<p>Judge: {_esc(j['model'])}, version {_esc(j['version'])} (sha256 {_esc(j['sha256'] or '–')}); "
            f"unparseable verdicts: <b>{_fmt(m.get('judge.unparseable'))}</b> of {_fmt(m.get('judge.verdicts'))}.</p>"
        )
    if result.staged:
        body.append("<h2>Files measured</h2><table><tr><th>suite</th><th>file</th><th>sha256</th></tr>")
        body += [
            f"<tr><td>{_esc(f.name)}</td><td>{_esc(f.path)}</td><td>{_esc(f.sha256)}</td></tr>"
            for f in result.staged
        ]
        body.append("</table>")
    body.append('<h2>Per category</h2><div class="charts">')
    body += [bar_chart(t, rows, series) for t, rows in _groups(m).items()]
    body.append("</div><h2>Every metric</h2><table><tr><th>metric</th><th>value</th></tr>")
    body += [f"<tr><td>{_esc(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(m.items())]
    body.append("</table>")
    return _page(f"Evaluation of {result.model_version} on {result.eval_set}", body)


def render_gate_report(
    title: str,
    candidate: str,
    baseline: str | None,
    rows: list[dict],
    cand_metrics: dict[str, float],
    base_metrics: dict[str, float],
) -> str:
    """The HTML page of a gate decision: each gated metric of the candidate beside
    the baseline's, the threshold and its verdict, and per-category charts of both."""
    series = [(candidate, cand_metrics)] + ([(baseline, base_metrics)] if baseline else [])
    failed = [r for r in rows if r["failure"]]
    body = [
        f"<p>Candidate <b>{_esc(candidate)}</b>; baseline <b>{_esc(baseline or 'none')}</b>. "
        + (
            f'<span class="fail">REFUSED: {len(failed)} gated metric(s) fail.</span>'
            if failed
            else '<span class="pass">PASSED.</span>'
        )
        + "</p>",
        "<table><tr><th>eval set</th><th>metric</th><th>candidate</th><th>baseline</th><th>Δ</th>"
        "<th>threshold</th><th>verdict</th></tr>",
    ]
    for r in rows:
        delta = None if r["candidate"] is None or r["baseline"] is None else r["candidate"] - r["baseline"]
        verdict = (
            f'<span class="fail">{_esc(r["failure"])}</span>'
            if r["failure"]
            else '<span class="pass">ok</span>'
        )
        body.append(
            f"<tr><td>{_esc(r['eval_set'])}</td><td>{_esc(r['metric'])}</td><td>{_fmt(r['candidate'])}</td>"
            f"<td>{_fmt(r['baseline'])}</td><td>{_fmt(delta)}</td><td>{_esc(r['threshold'])}</td><td>{verdict}</td></tr>"
        )
    body.append("</table><h2>Per category</h2>" + _legend(series) + '<div class="charts">')
    body += [bar_chart(t, rows_, series) for t, rows_ in _groups(cand_metrics | base_metrics).items()]
    body.append("</div>")
    return _page(title, body)
