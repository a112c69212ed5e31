// Inline SVG charts as HTML strings: no style attributes (a strict CSP blocks them), only
// SVG geometry attributes and classes. Labels are HTML beside the SVG so they do not stretch.

import { esc, isNum } from './util.js';

function path(points, x, y) {
  let d = '';
  let pen = false;
  for (const [t, v] of points) {
    if (!isNum(v) || !isNum(t)) {
      pen = false;
      continue;
    }
    d += (pen ? 'L' : 'M') + x(t).toFixed(1) + ' ' + y(v).toFixed(1);
    pen = true;
  }
  return d;
}

/**
 * A sparkline of values (numbers or null), scaled to [min, max] (max defaults to the data's).
 * opts: { min, max, cls, label }.
 */
export function sparkline(values, opts = {}) {
  const W = 100;
  const H = 24;
  const n = values.length;
  const label = esc(opts.label || 'trend');
  if (n < 2) return `<svg class="spark empty" viewBox="0 0 ${W} ${H}" role="img" aria-label="${label}: no history yet"></svg>`;
  let max = opts.max;
  let min = isNum(opts.min) ? opts.min : 0;
  if (!isNum(max)) {
    max = min;
    for (const v of values) if (isNum(v) && v > max) max = v;
  }
  if (max <= min) max = min + 1;
  const x = (i) => (i / (n - 1)) * W;
  const y = (v) => H - 1 - ((Math.min(Math.max(v, min), max) - min) / (max - min)) * (H - 2);
  const pts = values.map((v, i) => [i, v]);
  const line = path(pts, x, y);
  let area = '';
  if (line) {
    let first = -1;
    let last = -1;
    for (let i = 0; i < n; i++) if (isNum(values[i])) { if (first < 0) first = i; last = i; }
    area = `<path class="area" d="${line}L${x(last).toFixed(1)} ${H}L${x(first).toFixed(1)} ${H}Z"/>`;
  }
  return (
    `<svg class="spark ${esc(opts.cls || '')}" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="${label}">` +
    area +
    `<path class="line" d="${line}" vector-effect="non-scaling-stroke"/></svg>`
  );
}

/** A horizontal gauge for a fraction 0..1 (null: empty). */
export function gauge(fraction, label) {
  const f = isNum(fraction) ? Math.min(Math.max(fraction, 0), 1) : 0;
  const level = f >= 0.9 ? 'hot' : f >= 0.75 ? 'warm' : 'ok';
  return (
    `<svg class="gauge ${level}" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="${esc(label || '')}">` +
    `<rect class="track" width="100" height="6" rx="2"/><rect class="fill" width="${(f * 100).toFixed(1)}" height="6" rx="2"/></svg>`
  );
}

/**
 * A line chart over time. series: [{ name, cls, points: [[unixMs, value], ...] }].
 * opts: { fmt(v) for the y labels, tfmt(t) for the time labels, min, max, label, h, legend (false: none,
 * where the page shows the keys itself) }.
 */
export function lineChart(series, opts = {}) {
  const W = 600;
  const H = opts.h || 160;
  let t0 = Infinity;
  let t1 = -Infinity;
  let max = isNum(opts.max) ? opts.max : -Infinity;
  const min = isNum(opts.min) ? opts.min : 0;
  for (const s of series) {
    for (const [t, v] of s.points) {
      if (!isNum(t) || !isNum(v)) continue;
      if (t < t0) t0 = t;
      if (t > t1) t1 = t;
      if (!isNum(opts.max) && v > max) max = v;
    }
  }
  const label = esc(opts.label || 'chart');
  if (!isFinite(t0)) return `<div class="chart empty" role="img" aria-label="${label}: no data yet">no data yet</div>`;
  if (t1 <= t0) t1 = t0 + 1;
  if (!(max > min)) max = min + 1;
  const x = (t) => ((t - t0) / (t1 - t0)) * W;
  const y = (v) => H - 2 - ((v - min) / (max - min)) * (H - 4);
  const fmt = opts.fmt || ((v) => String(Math.round(v)));
  const tfmt = opts.tfmt || ((t) => new Date(t).toLocaleTimeString());
  let grid = '';
  for (let i = 1; i < 4; i++) grid += `<line class="grid" x1="0" x2="${W}" y1="${(H * i) / 4}" y2="${(H * i) / 4}" vector-effect="non-scaling-stroke"/>`;
  let lines = '';
  series.forEach((s, i) => {
    const d = path(s.points, x, y);
    if (!d) return;
    const single = s.points.filter((p) => isNum(p[1])).length === 1;
    lines += single
      ? `<circle class="dot ${esc(s.cls || 'c' + (i % 8))}" cx="${x(s.points.find((p) => isNum(p[1]))[0]).toFixed(1)}" cy="${y(s.points.find((p) => isNum(p[1]))[1]).toFixed(1)}" r="3"/>`
      : `<path class="series ${esc(s.cls || 'c' + (i % 8))}" d="${d}" vector-effect="non-scaling-stroke"/>`;
  });
  const legend = series
    .map((s, i) => `<span class="key ${esc(s.cls || 'c' + (i % 8))}">${esc(s.name)}</span>`)
    .join('');
  return (
    `<figure class="chart" role="img" aria-label="${label}">` +
    `<div class="plot"><span class="ymax">${esc(fmt(max))}</span><span class="ymin">${esc(fmt(min))}</span>` +
    `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${grid}${lines}</svg></div>` +
    `<div class="taxis"><span>${esc(tfmt(t0))}</span><span>${esc(tfmt(t1))}</span></div>` +
    (opts.legend === false ? '' : `<figcaption class="legend">${legend}</figcaption>`) +
    `</figure>`
  );
}

/** Horizontal bars: items [{ label, value, text }]. */
export function bars(items, label) {
  let max = 0;
  for (const it of items) if (isNum(it.value) && it.value > max) max = it.value;
  if (!items.length) return `<div class="chart empty">no data yet</div>`;
  return (
    `<div class="bars" role="table" aria-label="${esc(label || '')}">` +
    items
      .map((it) => {
        const f = max > 0 && isNum(it.value) ? it.value / max : 0;
        return (
          `<div class="bar" role="row"><span role="cell" class="bl">${esc(it.label)}</span>` +
          `<svg role="presentation" viewBox="0 0 100 10" preserveAspectRatio="none"><rect class="fill" width="${(f * 100).toFixed(1)}" height="10" rx="1.5"/></svg>` +
          `<span role="cell" class="bv">${esc(it.text)}</span></div>`
        );
      })
      .join('') +
    '</div>'
  );
}
