// The Workflows view: runs with their state, and a run's graph of steps (state colours, loop
// rounds, fan-out counts), each step's rows with their tasks, tokens and cost, and the run's
// cancel and retry. SVG geometry attributes and classes only: a strict CSP blocks style
// attributes.

import { setHTML, stateBadge, taskLink } from './views.js';
import { DASH, esc, fmtAgo, fmtCost, fmtDur, fmtNum, isNum, shortId, truncate } from './util.js';

const $ = (id) => document.getElementById(id);

export const RUN_FINAL = new Set(['succeeded', 'failed', 'cancelled']);
const ROW_STATES = ['running', 'pending', 'succeeded', 'failed', 'skipped', 'cancelled'];
const ROWS_SHOWN = 300;


function countsText(counts) {
  const c = counts || {};
  return ROW_STATES.filter((s) => c[s]).map((s) => `${c[s]} ${s}`).join(' · ') || DASH;
}

function tokens(t) {
  if (!t || (!t.input_tokens && !t.output_tokens)) return DASH;
  return `${fmtNum(t.input_tokens)} in · ${fmtNum(t.output_tokens)} out`;
}

function runDuration(run, now) {
  if (!isNum(run.created_unix_ms)) return DASH;
  return fmtDur((isNum(run.ended_unix_ms) ? run.ended_unix_ms : now) - run.created_unix_ms);
}

/** The runs, newest first. */
export function renderRuns(S) {
  const runs = [...S.runs.values()].sort((a, b) => (b.created_unix_ms || 0) - (a.created_unix_ms || 0));
  const now = Date.now();
  let html = '';
  for (const r of runs) {
    html +=
      `<a class="wrow" role="row" href="#/workflows/${esc(r.id)}" data-run="${esc(r.id)}" data-state="${esc(r.state)}">` +
      `<span role="cell">${stateBadge(r.state)}</span>` +
      `<span role="cell"><b>${esc(truncate(r.name, 60))}</b></span>` +
      `<span role="cell" class="mono" title="${esc(r.id)}">${esc(shortId(r.id))}</span>` +
      `<span role="cell">${esc(r.trigger || DASH)}</span>` +
      `<span role="cell">${esc(fmtAgo(r.created_unix_ms, now))}</span>` +
      `<span role="cell"${RUN_FINAL.has(r.state) ? '' : ` data-age="${esc(r.created_unix_ms)}"`}>${esc(runDuration(r, now))}</span>` +
      `<span role="cell" class="muted">${esc(countsText(r.counts))}</span>` +
      `<span role="cell">${esc(tokens(r.totals))}</span>` +
      `<span role="cell">${esc(fmtCost(r.totals && r.totals.cost_micros))}</span></a>`;
  }
  setHTML($('run-list'), html || `<p class="muted empty-row">${S.runsLoaded ? 'No workflow runs yet: hubctl workflow run FILE starts one.' : 'Loading…'}</p>`);
  const el = $('run-count');
  if (el) el.textContent = `${runs.length} run${runs.length === 1 ? '' : 's'}`;
}

// --- A run

/** Each step's rows (one, or one per item), by step id. */
function rowsByStep(run) {
  const by = new Map();
  for (const row of run.steps || []) {
    let list = by.get(row.id);
    if (!list) by.set(row.id, (list = []));
    list.push(row);
  }
  return by;
}

/** Columns by depth: a step sits one column right of the deepest step it needs. */
function layout(graph) {
  const depth = new Map();
  const byId = new Map(graph.map((g) => [g.id, g]));
  const visit = (id, seen) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0; // a cycle cannot pass validation; draw it anyway
    seen.add(id);
    const g = byId.get(id);
    let d = 0;
    for (const n of (g && g.needs) || []) if (byId.has(n)) d = Math.max(d, visit(n, seen) + 1);
    depth.set(id, d);
    return d;
  };
  const columns = [];
  for (const g of graph) {
    const d = visit(g.id, new Set());
    (columns[d] || (columns[d] = [])).push(g.id);
  }
  return columns.map((c) => c || []);
}

const NODE_W = 196;
const NODE_H = 70;
const GAP_X = 56;
const GAP_Y = 18;

/** What a node says under its name: its round, its items, its state. */
function nodeFacts(g, rows) {
  const step = rows[0];
  const state = step ? step.step_state : 'pending';
  const round = step ? step.round : 0;
  let line = state;
  if (g.loop_max) line += ` · round ${round || 0} of ${g.loop_max}`;
  else if (round > 1) line += ` · round ${round}`;
  let items = null;
  if (g.fan_out && rows.length && rows[0].item !== null && rows[0].item !== undefined) {
    const c = {};
    for (const r of rows) c[r.state] = (c[r.state] || 0) + 1;
    items = { total: rows.length, c };
  }
  return { state, line, items };
}

function graphSvg(run) {
  const graph = Array.isArray(run.graph) ? run.graph : [];
  if (!graph.length) return '';
  const by = rowsByStep(run);
  const columns = layout(graph);
  const needsOf = new Map(graph.map((g) => [g.id, g.needs || []]));
  // Rows: a step sits level with the steps it needs (their mean row), below any taken.
  const row = new Map();
  let rowsMax = 0;
  columns.forEach((col, x) => {
    const want = (id) => {
      const rows = needsOf.get(id).filter((n) => row.has(n)).map((n) => row.get(n));
      return x === 0 || !rows.length ? 0 : rows.reduce((a, b) => a + b, 0) / rows.length;
    };
    const order = x === 0 ? col : [...col].sort((a, b) => want(a) - want(b));
    let next = 0;
    for (const id of order) {
      const r = Math.max(next, Math.round(want(id)));
      row.set(id, r);
      next = r + 1;
    }
    rowsMax = Math.max(rowsMax, next);
  });
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((id) => pos.set(id, { x: x * (NODE_W + GAP_X), y: row.get(id) * (NODE_H + GAP_Y) })));
  const W = columns.length * (NODE_W + GAP_X) - GAP_X + 2;
  const H = rowsMax * (NODE_H + GAP_Y) - GAP_Y + 2 + (graph.some((g) => g.loop_from) ? 30 : 0);
  let edges = '';
  for (const g of graph) {
    const to = pos.get(g.id);
    for (const n of g.needs || []) {
      const from = pos.get(n);
      if (!from || !to) continue;
      const x1 = from.x + NODE_W + 1;
      const y1 = from.y + NODE_H / 2 + 1;
      const x2 = to.x - 5;
      const y2 = to.y + NODE_H / 2 + 1;
      const mx = (x1 + x2) / 2;
      const done = (by.get(n) || [])[0];
      const cls = done && (done.step_state === 'succeeded' || done.step_state === 'skipped') ? 'edge done' : 'edge';
      edges += `<path class="${cls}" d="M${x1} ${y1}C${mx} ${y1} ${mx} ${y2} ${x2} ${y2}" marker-end="url(#wf-arrow)" data-edge="${esc(n)}>${esc(g.id)}"/>`;
    }
  }
  // A loop over a group: a dashed arc back from its last step to its first.
  for (const g of graph) {
    const from = g.loop_from && pos.get(g.loop_from);
    const to = pos.get(g.id);
    if (!from || !to) continue;
    const x1 = to.x + NODE_W / 2;
    const x2 = from.x + NODE_W / 2;
    const y1 = to.y + NODE_H + 1;
    const y2 = from.y + NODE_H + 6;
    const low = Math.max(y1, y2) + 22;
    edges += `<path class="edge loop" d="M${x1} ${y1}C${x1} ${low} ${x2} ${low} ${x2} ${y2}" marker-end="url(#wf-arrow)" data-loop="${esc(g.id)}>${esc(g.loop_from)}"><title>${esc(`loop: ${g.loop_from} to ${g.id} again`)}</title></path>`;
  }
  let nodes = '';
  for (const g of graph) {
    const p = pos.get(g.id);
    const rows = by.get(g.id) || [];
    const f = nodeFacts(g, rows);
    const single = rows.length === 1 && (rows[0].item === null || rows[0].item === undefined) ? rows[0] : null;
    const href = single && single.task_id ? `#/tasks/${single.task_id}` : `#/workflows/${run.id}/${g.id}`;
    const label = `step ${g.id}: ${f.line}` + (f.items ? `, ${f.items.total} items` : '');
    let body =
      `<rect class="node st-${esc(f.state)}" x="${p.x + 1}" y="${p.y + 1}" width="${NODE_W}" height="${NODE_H}" rx="8"/>` +
      `<text class="nname" x="${p.x + 12}" y="${p.y + 22}">${esc(truncate(g.id, 22))}</text>` +
      `<text class="nkind" x="${p.x + NODE_W - 10}" y="${p.y + 22}" text-anchor="end">${esc(g.kind + (g.conditional ? ' · if' : ''))}</text>` +
      `<text class="nline st-${esc(f.state)}" x="${p.x + 12}" y="${p.y + 42}">${esc(f.line)}</text>`;
    if (f.items) {
      const c = f.items.c;
      const done = (c.succeeded || 0) + (c.failed || 0) + (c.skipped || 0) + (c.cancelled || 0);
      body += `<text class="nitems" x="${p.x + 12}" y="${p.y + 60}">${esc(`${done}/${f.items.total} items`)}${c.running ? esc(` · ${c.running} running`) : ''}${c.failed ? esc(` · ${c.failed} failed`) : ''}</text>`;
      // A bar of the items by state.
      let x = p.x + 110;
      const w = NODE_W - 110 - 10;
      for (const s of ['succeeded', 'failed', 'running', 'cancelled']) {
        const n = c[s] || 0;
        if (!n) continue;
        const bw = (n / f.items.total) * w;
        body += `<rect class="nbar st-${s}" x="${x.toFixed(1)}" y="${p.y + 53}" width="${bw.toFixed(1)}" height="8"/>`;
        x += bw;
      }
    } else if (single) {
      const dur = isNum(single.duration_ms) ? fmtDur(single.duration_ms) : '';
      const tok = single.input_tokens || single.output_tokens ? `${fmtNum(single.input_tokens + single.output_tokens)} tok` : '';
      body += `<text class="nitems" x="${p.x + 12}" y="${p.y + 60}">${esc([dur, tok, single.verdict].filter(Boolean).join(' · '))}</text>`;
    }
    nodes += `<a href="${esc(href)}" data-step="${esc(g.id)}" data-state="${esc(f.state)}" aria-label="${esc(label)}"><title>${esc(label)}</title>${body}</a>`;
  }
  return (
    `<div class="scroll"><svg class="wfgraph" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="group" aria-label="the run's steps">` +
    `<defs><marker id="wf-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path class="arrow" d="M0 0L10 5L0 10z"/></marker></defs>` +
    edges + nodes + '</svg></div>'
  );
}

function rowsTable(run, only) {
  const rows = (run.steps || []).filter((r) => !only || r.id === only);
  if (!rows.length) return '<p class="muted">No steps.</p>';
  const shown = rows.slice(0, ROWS_SHOWN);
  let html =
    '<div class="scroll"><table class="wfrows"><thead><tr>' +
    ['Step', 'Item', 'State', 'Round', 'Duration', 'Tokens', 'Cost', 'Verdict', 'Task', 'Why'].map((h) => `<th scope="col">${h}</th>`).join('') +
    '</tr></thead><tbody>';
  for (const r of shown) {
    const item = r.item === null || r.item === undefined ? DASH : `${r.item}: ${truncate(JSON.stringify(r.item_value), 40)}`;
    html +=
      `<tr data-row="${esc(r.id)}${r.item === null || r.item === undefined ? '' : ':' + esc(r.item)}">` +
      `<td><b>${esc(r.id)}</b>${r.model ? ` <small class="muted">${esc(r.model)}</small>` : ''}</td>` +
      `<td class="mono">${esc(item)}</td>` +
      `<td>${stateBadge(r.state)}</td>` +
      `<td>${esc(r.round || DASH)}</td>` +
      `<td>${isNum(r.duration_ms) ? esc(fmtDur(r.duration_ms)) : DASH}</td>` +
      `<td>${esc(tokens(r))}</td>` +
      `<td>${esc(isNum(r.cost_micros) ? fmtCost(r.cost_micros) : DASH)}</td>` +
      `<td>${esc(r.verdict || DASH)}</td>` +
      `<td class="mono">${r.task_id ? taskLink(r.task_id) : DASH}</td>` +
      `<td class="muted">${esc(truncate(r.reason || '', 120))}</td></tr>`;
  }
  html += '</tbody></table></div>';
  if (rows.length > shown.length) html += `<p class="muted">${rows.length - shown.length} more rows: <code>hubctl workflow get ${esc(run.id)}</code> shows them all.</p>`;
  return html;
}

/** A run: W is { id, run, step, error }. */
export function renderRun(W) {
  const run = W.run;
  if (!run) {
    setHTML($('wf-head'), `<h2>Run <span class="mono">${esc(W.id)}</span></h2>`);
    setHTML($('wf-graph'), W.error ? '' : '<p class="muted">Loading…</p>');
    setHTML($('wf-rows'), '');
    return;
  }
  const now = Date.now();
  let actions = '';
  if (!RUN_FINAL.has(run.state)) actions += `<button type="button" class="btn danger" data-action="run-cancel" data-id="${esc(run.id)}">Cancel run</button>`;
  if (run.state === 'failed' || run.state === 'cancelled') actions += `<button type="button" class="btn primary" data-action="run-retry" data-id="${esc(run.id)}">Retry from failed steps</button>`;
  const slow = run.slowest_step;
  const facts = [
    ['Run', `<span class="mono">${esc(run.id)}</span>`],
    ['Trigger', esc(run.trigger || DASH) + (run.delivery ? ` <small class="muted">delivery ${esc(run.delivery)}</small>` : '')],
    ['Started', esc(fmtAgo(run.created_unix_ms, now))],
    ['Duration', `<span${RUN_FINAL.has(run.state) ? '' : ` data-age="${esc(run.created_unix_ms)}"`}>${esc(runDuration(run, now))}</span>`],
    ['Steps', esc(countsText(run.counts))],
    ['Tokens', esc(tokens(run.totals))],
    ['Cost', esc(fmtCost(run.totals && run.totals.cost_micros))],
    ['Slowest', slow ? `${esc(slow.id)}${isNum(slow.item) ? `[${esc(slow.item)}]` : ''} · ${esc(fmtDur(slow.duration_ms))}` : DASH],
  ];
  if (run.retries) facts.push(['Retries', esc(run.retries)]);
  const inputs = run.inputs && typeof run.inputs === 'object' && Object.keys(run.inputs).length ? JSON.stringify(run.inputs) : '';
  if (inputs) facts.push(['Inputs', `<code>${esc(truncate(inputs, 300))}</code>`]);
  setHTML(
    $('wf-head'),
    `<div class="vh"><h2>${esc(run.name)}</h2>${stateBadge(run.state)}<div class="actions">${actions}</div></div>` +
      `<dl class="facts wffacts">${facts.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join('')}</dl>`,
  );
  setHTML($('wf-graph'), graphSvg(run));
  const only = W.step && (run.graph || []).some((g) => g.id === W.step) ? W.step : null;
  setHTML(
    $('wf-rows'),
    `<h3>${only ? `Step ${esc(only)} <small><a href="#/workflows/${esc(run.id)}">all steps</a></small>` : 'Steps'}</h3>` + rowsTable(run, only),
  );
}

