// Rendering: each view builds escaped HTML strings and replaces a container only when its
// markup changed (keeping focus on the same control). Host cards are keyed, so one host's
// event re-renders one card.

import { bars, gauge, lineChart, sparkline } from './charts.js';
import {
  AGENT_STATES, DASH, FINAL, LANES, commandOf, esc, fmtAgo, fmtBytes, fmtClock, fmtCost,
  fmtDur, fmtNum, fmtPct, fmtTime, fmtUsed, isNum, shortId, taskKind, taskName, truncate,
} from './util.js';

const $ = (id) => document.getElementById(id);

function focusKey(el) {
  if (el.id) return '#' + CSS.escape(el.id);
  let sel = el.tagName.toLowerCase();
  for (const name of ['data-action', 'data-host', 'data-task', 'data-id', 'data-more', 'href']) {
    const v = el.getAttribute(name);
    if (v !== null) sel += `[${name}="${CSS.escape(v)}"]`;
  }
  return sel;
}

/** Replaces el's markup when it changed; the focused control inside keeps the focus. */
export function setHTML(el, html) {
  if (!el || el._html === html) return false;
  const active = document.activeElement;
  const key = active && active !== document.body && el.contains(active) ? focusKey(active) : null;
  el.innerHTML = html;
  el._html = html;
  if (key) {
    const again = el.querySelector(key);
    if (again) again.focus({ preventScroll: true });
  }
  return true;
}

function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

const badge = (text, cls, title) =>
  `<span class="badge ${cls}"${title ? ` title="${esc(title)}"` : ''}>${esc(text)}</span>`;

export function stateBadge(state) {
  return badge(String(state || 'unknown').replace('_', ' '), 'st-' + esc(state || 'unknown'));
}

function table(head, rows, cls = '') {
  if (!rows.length) return '';
  return (
    `<div class="scroll"><table class="${cls}"><thead><tr>${head.map((h) => `<th scope="col">${h}</th>`).join('')}</tr></thead>` +
    `<tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('')}</tbody></table></div>`
  );
}

export const taskLink = (id, text) => `<a href="#/tasks/${esc(id)}" title="${esc(id)}">${esc(text || shortId(id))}</a>`;

// --- Fleet

const cards = new Map(); // host id -> element
let cardOrder = '';

export function resetFleet() {
  for (const el of cards.values()) el.remove();
  cards.clear();
  cardOrder = '';
}

function byState(agents) {
  const n = {};
  for (const s of AGENT_STATES) n[s] = 0;
  for (const a of agents) n[a.state] = (n[a.state] || 0) + 1;
  return n;
}

function slot(id) {
  const i = String(id).lastIndexOf('/');
  const n = Number(String(id).slice(i + 1));
  return isNum(n) ? n : 0;
}

function worstDisk(disks) {
  let worst = null;
  for (const d of disks || []) {
    if (!d || !isNum(d.total_bytes) || d.total_bytes <= 0) continue;
    const used = d.total_bytes - (isNum(d.available_bytes) ? d.available_bytes : 0);
    const f = used / d.total_bytes;
    if (!worst || f > worst.f) worst = { mount: d.mount, used, total: d.total_bytes, f };
  }
  return worst;
}

function hostCard(id, h, agents, hist) {
  const r = (h && h.resources) || null;
  const name = (h && h.hostname) || (agents[0] && agents[0].hostname) || id;
  const online = h ? !!h.online : agents.some((a) => a.state !== 'offline');
  const cordon = h && h.cordon;
  let head = `<h3 title="${esc(id)}">${esc(name)}</h3>`;
  head += online ? badge('online', 'ok') : badge('offline', 'off');
  if (cordon) {
    const t = 'cordoned ' + fmtAgo(cordon.since_unix_ms) + (isNum(cordon.deadline_unix_ms) ? '; work stopped ' + fmtTime(cordon.deadline_unix_ms) : '');
    head += badge('draining', 'warn cordon', t);
  }
  if (r && r.gpus_simulated) head += badge('simulated', 'sim', 'GPU figures are simulated');
  const stalled = agents.filter((a) => a.stalled).length;
  if (stalled) head += badge(stalled + ' stalled', 'warn');

  const meta = [];
  if (name !== id) meta.push(esc(id));
  if (h && (h.os || h.arch)) meta.push(esc([h.os, h.arch].filter(Boolean).join('/')));
  if (h && h.version) meta.push('v' + esc(h.version));
  if (!online && h && isNum(h.last_seen_unix_ms)) meta.push('seen ' + esc(fmtAgo(h.last_seen_unix_ms)));
  const samples = (hist && hist.samples) || [];

  let body = '';
  if (r) {
    const memF = isNum(r.memory_total_bytes) && r.memory_total_bytes > 0 ? r.memory_used_bytes / r.memory_total_bytes : null;
    const disk = worstDisk(r.disks);
    body +=
      '<div class="metrics">' +
      `<div class="metric"><span class="k">CPU</span><b>${fmtPct(r.cpu_percent)}</b><small>load ${isNum(r.load1) ? r.load1.toFixed(2) : DASH}</small>` +
      gauge(isNum(r.cpu_percent) ? r.cpu_percent / 100 : null, 'CPU ' + fmtPct(r.cpu_percent)) +
      sparkline(samples.map((s) => s.cpu_percent), { max: 100, cls: 'cpu', label: 'CPU over the last hour' }) +
      '</div>' +
      `<div class="metric"><span class="k">Memory</span><b>${esc(fmtUsed(r.memory_used_bytes, r.memory_total_bytes))}</b>` +
      gauge(memF, 'memory used ' + fmtPct(isNum(memF) ? memF * 100 : null)) +
      sparkline(samples.map((s) => s.memory_used_bytes), { max: r.memory_total_bytes, cls: 'mem', label: 'memory over the last hour' }) +
      '</div>' +
      (disk
        ? `<div class="metric"><span class="k">Disk <code>${esc(truncate(disk.mount, 18))}</code></span><b>${esc(fmtUsed(disk.used, disk.total))}</b>` +
          gauge(disk.f, 'disk ' + disk.mount + ' used ' + fmtPct(disk.f * 100)) + '</div>'
        : `<div class="metric"><span class="k">Disk</span><b>${DASH}</b></div>`) +
      '</div>';
    const gpus = Array.isArray(r.gpus) ? r.gpus : [];
    if (gpus.length) {
      body += '<div class="gpus">';
      for (const g of gpus) {
        const vf = isNum(g.memory_total_bytes) && g.memory_total_bytes > 0 && isNum(g.memory_used_bytes) ? g.memory_used_bytes / g.memory_total_bytes : null;
        body +=
          `<div class="gpu" data-gpu="${esc(g.index)}"><div class="gh"><span class="gname">GPU ${esc(g.index)} ${esc(g.name || '')}</span>` +
          `<span class="gstats"><span title="utilization">${fmtPct(g.utilization_percent)}</span>` +
          `<span title="temperature">${isNum(g.temperature_celsius) ? esc(Math.round(g.temperature_celsius)) + ' °C' : DASH}</span>` +
          `<span title="power">${isNum(g.power_milliwatts) ? esc(Math.round(g.power_milliwatts / 1000)) + ' W' : DASH}</span></span></div>` +
          `<div class="gv"><span class="k">VRAM</span>${gauge(vf, 'VRAM used')}<span>${esc(fmtUsed(g.memory_used_bytes, g.memory_total_bytes))}</span></div></div>`;
      }
      body +=
        `<div class="metric gutil"><span class="k">GPU util, 1 h</span>` +
        sparkline(samples.map((s) => s.gpu_utilization_percent), { max: 100, cls: 'gpu', label: 'GPU utilization over the last hour' }) +
        '</div></div>';
    }
  } else {
    body += `<p class="muted">No resource report${online ? ' yet' : ''}.</p>`;
  }

  const counts = byState(agents);
  const parts = AGENT_STATES.filter((s) => counts[s]).map((s) => `<span class="ac s-${s}"><i class="dot"></i>${counts[s]} ${s}</span>`);
  let grid = '';
  for (const a of agents) {
    const title = a.id + ' · ' + a.state + (a.task_id ? ' · task ' + a.task_id : '') + (a.stalled ? ' · stalled' : '');
    grid += `<i class="s-${esc(a.state)}${a.stalled ? ' stalled' : ''}" title="${esc(title)}"></i>`;
  }
  const agentsHtml = agents.length
    ? `<div class="agents"><div class="acounts">${parts.join('')}</div><div class="agrid" role="img" aria-label="${esc(agents.length + ' agents: ' + AGENT_STATES.filter((s) => counts[s]).map((s) => counts[s] + ' ' + s).join(', '))}">${grid}</div></div>`
    : '<p class="muted">No agents.</p>';

  let actions = `<button type="button" class="btn" data-action="drain" data-host="${esc(id)}" aria-label="Drain ${esc(name)}">Drain</button>`;
  if (cordon) actions += `<button type="button" class="btn primary" data-action="uncordon" data-host="${esc(id)}" aria-label="Uncordon ${esc(name)}">Uncordon</button>`;

  return (
    `<header class="ch"><div class="title">${head}</div><div class="actions">${actions}</div></header>` +
    (meta.length ? `<div class="meta">${meta.join(' · ')}</div>` : '') +
    body + agentsHtml
  );
}

/**
 * Renders the fleet. only: a Set of host ids to re-render (null: all), so one host's event
 * costs one card.
 */
export function renderFleet(S, ctx, only) {
  const groups = new Map();
  for (const a of S.agents.values()) {
    const hid = a.sidecar_id || a.hostname || '?';
    let g = groups.get(hid);
    if (!g) groups.set(hid, (g = []));
    g.push(a);
  }
  const counts = byState(S.agents.values());
  for (const el of document.querySelectorAll('[data-agent-count]')) setText(el, String(counts[el.dataset.agentCount] || 0));
  const ids = new Set([...S.hosts.keys(), ...groups.keys()]);
  let online = 0;
  let gpus = 0;
  for (const h of S.hosts.values()) {
    if (h.online) online++;
    if (h.resources && Array.isArray(h.resources.gpus)) gpus += h.resources.gpus.length;
  }
  setText($('fleet-hosts'), `${online} of ${S.hosts.size} hosts online · ${S.agents.size} agents · ${gpus} GPUs`);

  const list = $('hosts');
  const sorted = [...ids].sort((a, b) => {
    const ha = S.hosts.get(a);
    const hb = S.hosts.get(b);
    const na = (ha && ha.hostname) || a;
    const nb = (hb && hb.hostname) || b;
    return na < nb ? -1 : na > nb ? 1 : a < b ? -1 : 1;
  });
  for (const [id, el] of cards) {
    if (!ids.has(id)) {
      el.remove();
      cards.delete(id);
    }
  }
  for (const id of sorted) {
    let el = cards.get(id);
    const fresh = !el;
    if (fresh) {
      el = document.createElement('article');
      el.className = 'card host';
      el.dataset.host = id;
      cards.set(id, el);
      ctx.observeHost(el);
    }
    if (fresh || !only || only.has(id)) {
      const agents = (groups.get(id) || []).sort((a, b) => slot(a.id) - slot(b.id));
      const h = S.hosts.get(id);
      el.classList.toggle('offline', h ? !h.online : false);
      el.classList.toggle('cordoned', !!(h && h.cordon));
      el.setAttribute('aria-label', 'host ' + ((h && h.hostname) || id));
      setHTML(el, hostCard(id, h, agents, S.hist.get(id)));
    }
  }
  const order = sorted.join('\n');
  if (order !== cardOrder) {
    cardOrder = order;
    list.append(...sorted.map((id) => cards.get(id)));
  }
  setHTML($('hosts-empty'), ids.size ? '' : '<p class="muted">No sidecar has connected yet.</p>');
  if (!only) renderEndpoints(S);
}

export function renderEndpoints(S) {
  const eps = S.endpoints || [];
  const html = eps
    .map((ep) => {
      const owner = ep.owner && ep.owner.by === 'sidecar' ? 'sidecar ' + (ep.owner.sidecar_id || '') : 'hub';
      const models = Array.isArray(ep.models) ? ep.models : [];
      const chips = models
        .map((m) => {
          const warm = m.state === 'warm';
          const detail = warm ? 'warm' + (isNum(m.size_vram_bytes) ? ' · ' + fmtBytes(m.size_vram_bytes) + ' VRAM' : '') : 'cold';
          const title = [m.family, m.parameter_size, m.quantization, isNum(m.size_bytes) ? fmtBytes(m.size_bytes) : '', warm && isNum(m.expires_unix_ms) ? 'unloads ' + fmtAgo(m.expires_unix_ms) : '']
            .filter(Boolean).join(' · ');
          return `<span class="chip ${warm ? 'warm' : 'cold'}" data-model="${esc(m.name)}" data-state="${warm ? 'warm' : 'cold'}" title="${esc(title)}">${esc(m.name)} <small>${esc(detail)}</small></span>`;
        })
        .join('');
      const par = isNum(ep.parallel_learned) ? `parallel ${ep.parallel || 1} (learned ${ep.parallel_learned})` : ep.parallel ? `parallel ${ep.parallel}` : '';
      return (
        `<article class="card ep" data-endpoint="${esc(ep.id)}"><header class="ch"><div class="title"><h3>${esc(ep.url || ep.id)}</h3>` +
        badge(ep.kind || '?', 'kind') + (ep.healthy ? badge('healthy', 'ok') : badge('unhealthy', 'bad')) + '</div></header>' +
        `<div class="meta">${esc(ep.id)} · ${esc(owner)}${ep.version ? ' · v' + esc(ep.version) : ''}${par ? ' · ' + esc(par) : ''}${isNum(ep.checked_unix_ms) ? ' · checked ' + esc(fmtAgo(ep.checked_unix_ms)) : ''}</div>` +
        (ep.error ? `<p class="error-text">${esc(ep.error)}</p>` : '') +
        `<div class="chips">${chips || '<span class="muted">no models</span>'}</div></article>`
      );
    })
    .join('');
  setHTML($('endpoints'), html || '<p class="muted">No LLM endpoints.</p>');
}

// --- Queue

export function renderQueue(S) {
  const q = S.queue || {};
  const tile = (key, label, cls = '') =>
    `<div class="tile ${cls}"><span class="k">${esc(label)}</span><b data-queue="${key}">${fmtNum(q[key])}</b></div>`;
  const oldest = isNum(q.oldest_ready_unix_ms) ? q.oldest_ready_unix_ms : null;
  let html =
    tile('ready', 'ready') + tile('blocked', 'blocked', q.blocked ? 'warn' : '') + tile('delayed', 'delayed') +
    tile('leased', 'leased') + tile('waiting_on_dependencies', 'waiting on deps') +
    tile('dead_lettered', 'dead letters', q.dead_lettered ? 'bad' : '') + tile('tasks', 'tasks stored') +
    `<div class="tile"><span class="k">oldest waiting</span><b${oldest ? ` data-age="${oldest}"` : ''}>${oldest ? esc(fmtDur(Date.now() - oldest)) : DASH}</b></div>`;
  setHTML($('queue-counts'), html);
  const lanes = q.ready_by_lane && typeof q.ready_by_lane === 'object' ? q.ready_by_lane : null;
  setHTML(
    $('queue-lanes'),
    lanes
      ? LANES.map((l) => `<span class="key lane-${l}">${l} <b>${fmtNum(lanes[l])}</b></span>`).join('') +
          `<span class="key lane-blocked">blocked <b>${fmtNum(q.blocked)}</b></span>`
      : '',
  );
  setHTML(
    $('queue-extra'),
    `tier fallbacks ${fmtNum(q.tier_fallbacks)} · prewarms ${fmtNum(q.prewarms)} · escalations ${fmtNum(q.escalations)} · stale messages refused ${fmtNum(q.stale_messages_refused)}`,
  );
  renderQueueChart(S);

  const blocked = S.blocked.filter((b) => b.why && b.why.waiting);
  setHTML(
    $('queue-blocked'),
    S.blockedLoaded
      ? table(
          ['Task', 'Name', 'Lane', 'Waiting', 'Code', 'Why'],
          blocked.map(({ task: t, why: w }) => [
            taskLink(t.id),
            esc(truncate(taskName(t) || commandOf(t), 60)),
            esc(t.spec && t.spec.priority),
            esc(fmtAgo(w.since_unix_ms || t.created_unix_ms)),
            `<code>${esc(w.code)}</code>`,
            esc(w.message),
          ]),
        ) || '<p class="muted">Nothing is blocked.</p>'
      : '<p class="muted">Loading…</p>',
  );
  setHTML(
    $('queue-dlq'),
    S.dlqLoaded
      ? table(
          ['Task', 'Name', 'Reason', 'Attempts', 'When', ''],
          S.dlq.map((t) => [
            taskLink(t.id),
            esc(truncate(taskName(t) || commandOf(t), 60)),
            esc(truncate(t.state_reason, 120)),
            esc(t.attempt),
            esc(fmtAgo(t.updated_unix_ms)),
            `<button type="button" class="btn" data-action="retry" data-id="${esc(t.id)}" aria-label="Retry task ${esc(t.id)}">Retry</button>`,
          ]),
        ) || '<p class="muted">No dead letters.</p>'
      : '<p class="muted">Loading…</p>',
  );
}

export function renderQueueChart(S) {
  const samples = S.samples;
  const hasLanes = samples.some((s) => s.lanes);
  const series = hasLanes
    ? LANES.map((l) => ({ name: l, cls: 'lane-' + l, points: samples.map((s) => [s.t, s.lanes ? s.lanes[l] : null]) }))
    : [{ name: 'ready', cls: 'lane-normal', points: samples.map((s) => [s.t, s.ready]) }];
  series.push({ name: 'blocked', cls: 'lane-blocked', points: samples.map((s) => [s.t, s.blocked]) });
  // Its keys, with the counts now, are the line above it (queue-lanes): no second legend.
  setHTML(
    $('queue-chart'),
    lineChart(series, { label: 'ready tasks by lane since the page opened', tfmt: fmtClockS, fmt: (v) => fmtNum(v), legend: !hasLanes }),
  );
}

const fmtClockS = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

// --- Tasks

export function filteredTasks(S) {
  const { state, text } = S.taskFilter;
  const needle = text.trim().toLowerCase();
  const out = [];
  for (const t of S.tasks.values()) {
    if (state && t.state !== state) continue;
    if (needle) {
      const hay = (t.id + '\n' + taskName(t) + '\n' + commandOf(t)).toLowerCase();
      if (!hay.includes(needle)) continue;
    }
    out.push(t);
  }
  out.sort((a, b) => (b.created_unix_ms || 0) - (a.created_unix_ms || 0) || (a.id < b.id ? 1 : -1));
  return out;
}

export function renderTasks(S) {
  const list = filteredTasks(S);
  const shown = list.slice(0, S.taskLimit);
  const now = Date.now();
  let html = '';
  for (const t of shown) {
    const started = t.started_unix_ms;
    const end = t.finished_unix_ms || (FINAL.has(t.state) ? t.updated_unix_ms : now);
    const name = taskName(t);
    const cmd = commandOf(t);
    html +=
      `<a class="trow" role="row" href="#/tasks/${esc(t.id)}" data-task="${esc(t.id)}">` +
      `<span role="cell">${stateBadge(t.state)}</span>` +
      `<span role="cell" class="mono" title="${esc(t.id)}">${esc(shortId(t.id))}</span>` +
      `<span role="cell" class="tname">${name ? `<b>${esc(truncate(name, 80))}</b> ` : ''}<span class="muted">${esc(truncate(cmd, 140))}</span></span>` +
      `<span role="cell">${esc(taskKind(t))}</span>` +
      `<span role="cell" class="mono">${esc(t.agent_id || DASH)}</span>` +
      `<span role="cell">${esc(fmtAgo(t.created_unix_ms, now))}</span>` +
      `<span role="cell">${isNum(started) ? esc(fmtDur(end - started)) : DASH}</span></a>`;
  }
  setHTML($('task-list'), html || `<p class="muted empty-row">${S.tasksLoaded ? 'No tasks match.' : 'Loading…'}</p>`);
  setText($('task-count'), `${shown.length} of ${list.length} shown`);
  setHTML(
    $('task-more'),
    list.length > shown.length ? `<button type="button" class="btn" data-action="more" data-more="1">Show ${Math.min(200, list.length - shown.length)} more</button>` : '',
  );
}

// --- Task detail

function exitText(exit) {
  if (exit === null || exit === undefined) return DASH;
  if (typeof exit === 'string') return exit;
  if (isNum(exit.code)) return 'exit code ' + exit.code;
  if (isNum(exit.signal)) return 'signal ' + exit.signal;
  return JSON.stringify(exit);
}

function dl(items) {
  return (
    '<dl class="facts">' +
    items.filter((x) => x && x[1] !== '' && x[1] !== null && x[1] !== undefined).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join('') +
    '</dl>'
  );
}

function verificationStep(v) {
  if (typeof v === 'string') return v;
  const k = v && Object.keys(v)[0];
  if (!k) return '';
  const x = v[k];
  if (typeof x === 'string') return k + ' ' + x;
  if (x && Array.isArray(x.argv)) return k + ' ' + x.argv.join(' ');
  if (x && (x.text || x.regex)) return k + ' ' + (x.text || '/' + x.regex + '/');
  if (x && x.model) return k + ' ' + x.model;
  return k;
}

export function renderTaskDetail(D) {
  const t = D.task;
  if (D.error && !t) {
    setHTML($('td-head'), `<h2>Task <span class="mono">${esc(D.id)}</span></h2><p class="error-text">${esc(D.error)}</p>`);
    for (const id of ['td-facts', 'td-usage', 'td-why', 'td-decision', 'td-verif', 'td-steps']) setHTML($(id), '');
    return;
  }
  if (!t) {
    setHTML($('td-head'), `<h2>Task <span class="mono">${esc(D.id)}</span></h2><p class="muted">Loading…</p>`);
    return;
  }
  const final = FINAL.has(t.state);
  const kind = taskKind(t);
  let actions = '';
  if (!final) actions += `<button type="button" class="btn danger" data-action="cancel" data-id="${esc(t.id)}">Cancel</button>`;
  if (t.state === 'dead_lettered') actions += `<button type="button" class="btn" data-action="retry" data-id="${esc(t.id)}">Retry</button>`;
  setHTML(
    $('td-head'),
    `<div class="ch"><div class="title"><h2>${esc(taskName(t) || 'Task')}</h2>${stateBadge(t.state)}${badge(kind, 'kind')}</div><div class="actions">${actions}</div></div>` +
      `<div class="meta mono">${esc(t.id)}</div>` +
      (t.state_reason ? `<p class="${t.state === 'succeeded' ? 'muted' : 'error-text'}">${esc(t.state_reason)}</p>` : ''),
  );

  const spec = t.spec || {};
  const lim = spec.limits || {};
  const o = t.outcome || null;
  const started = t.started_unix_ms;
  const dur = o && isNum(o.duration_ms) ? o.duration_ms : isNum(started) ? (t.finished_unix_ms || Date.now()) - started : null;
  const work = spec.work || {};
  const deps = Array.isArray(spec.depends_on) ? spec.depends_on : [];
  const labels = spec.labels && typeof spec.labels === 'object' ? Object.entries(spec.labels).map(([k, v]) => `${k}=${v}`).join(', ') : '';
  setHTML(
    $('td-facts'),
    '<h3>Task</h3>' +
      dl([
        ['Priority', esc(spec.priority)],
        ['Tier', esc(spec.tier || 'inferred')],
        ['Attempt', esc(t.attempt + (isNum(lim.max_attempts) ? ' of ' + lim.max_attempts : ''))],
        ['Created', `<span title="${esc(fmtTime(t.created_unix_ms))}">${esc(fmtAgo(t.created_unix_ms))}</span>`],
        ['Started', isNum(started) ? `<span title="${esc(fmtTime(started))}">${esc(fmtAgo(started))}</span>` : DASH],
        ['Finished', isNum(t.finished_unix_ms) ? `<span title="${esc(fmtTime(t.finished_unix_ms))}">${esc(fmtAgo(t.finished_unix_ms))}</span>` : DASH],
        ['Duration', esc(fmtDur(dur))],
        ['Ran on', t.sidecar_id ? `<span class="mono">${esc(t.agent_id || t.sidecar_id)}</span>` : DASH],
        ['Exit', o ? esc(exitText(o.exit) + (o.timed_out ? ' (timed out)' : '') + (o.budget_exceeded ? ' (budget exceeded)' : '')) : ''],
        ['Error', o && o.error ? `<span class="error-text">${esc(o.error)}</span>` : ''],
        ['Timeout', isNum(lim.timeout_ms) ? esc(fmtDur(lim.timeout_ms)) : ''],
        ['Deadline', isNum(lim.deadline_unix_ms) ? esc(fmtTime(lim.deadline_unix_ms)) : ''],
        ['Model', work.llm && work.llm.model ? esc(work.llm.model) : spec.placement && spec.placement.model ? esc(spec.placement.model) : ''],
        ['Depends on', deps.length ? deps.map((d) => taskLink(d)).join(', ') : ''],
        ['Labels', labels ? esc(labels) : ''],
        ['Verification', Array.isArray(spec.verification) && spec.verification.length ? esc(spec.verification.map(verificationStep).join('; ')) : ''],
      ]) +
      `<details${kind === 'shell' ? ' open' : ''}><summary>${kind === 'llm' ? 'Prompt' : kind === 'agent' ? 'Goal' : 'Command'}</summary><pre class="cmd">${esc(commandOf(t))}</pre></details>`,
  );
  setText($('td-output-title'), kind === 'llm' ? 'Reply (token stream)' : 'Output');
  setText(
    $('td-output-meta'),
    o && (o.stdout_total_bytes || o.stderr_total_bytes) ? `stdout ${fmtBytes(o.stdout_total_bytes)} · stderr ${fmtBytes(o.stderr_total_bytes)}` : '',
  );

  const u = o && o.usage;
  setHTML(
    $('td-usage'),
    u
      ? '<h3>Usage</h3>' +
          dl([
            ['Model', esc(u.model)],
            ['Provider', esc(u.provider)],
            ['Endpoint', esc(u.endpoint_id)],
            ['TTFT', isNum(u.ttft_ms) ? esc(fmtNum(u.ttft_ms) + ' ms') : DASH],
            ['Tokens/s', isNum(u.output_tokens_per_s) ? esc(u.output_tokens_per_s.toFixed(1)) : DASH],
            ['Tokens in', esc(fmtNum(u.input_tokens))],
            ['Tokens out', esc(fmtNum(u.output_tokens))],
            ['Cached in', u.cached_input_tokens ? esc(fmtNum(u.cached_input_tokens)) : ''],
            ['Cache writes', u.cache_write_tokens ? esc(fmtNum(u.cache_write_tokens)) : ''],
            ['Load', isNum(u.load_ms) ? esc(fmtDur(u.load_ms)) : ''],
            ['Cost', esc(fmtCost(u.cost_micros))],
          ])
      : '',
  );

  const w = D.why;
  setHTML(
    $('td-why'),
    w && !final && w.code
      ? `<h3>Why it ${w.waiting ? 'waits' : 'is where it is'}</h3>` +
          dl([
            ['Code', `<code>${esc(w.code)}</code>`],
            ['Reason', esc(w.message)],
            ['Since', isNum(w.since_unix_ms) ? esc(fmtAgo(w.since_unix_ms)) : ''],
            ['Tier', esc(w.tier || '')],
            ['Model', esc(w.model || '')],
            ['Falls back', isNum(w.fallback_at_unix_ms) ? esc(fmtAgo(w.fallback_at_unix_ms)) : ''],
            ['Placement now', w.placement_now ? esc(w.placement_now.reason) : ''],
          ]) +
          (w.placement_now ? candidates(w.placement_now) : '')
      : '',
  );

  const ds = Array.isArray(D.decisions) ? D.decisions : [];
  setHTML(
    $('td-decision'),
    ds.length
      ? '<h3>Placement</h3>' +
          ds
            .map(
              (d) =>
                `<div class="decision"><p><b>${esc(d.kind)}</b> ${esc(fmtAgo(d.at_unix_ms))}, attempt ${esc(d.attempt)}: ${esc(d.reason)}</p>` +
                dl([
                  ['Tier', esc((d.tier || DASH) + (d.tier_source ? ' (' + d.tier_source + ')' : ''))],
                  ['Model', esc(d.model || '')],
                  ['Where', d.agent_id || d.sidecar_id ? `<span class="mono">${esc(d.agent_id || d.sidecar_id)}</span>${d.endpoint_id ? ' via ' + esc(d.endpoint_id) : ''}` : ''],
                  ['Waits on', d.wait ? `<code>${esc(d.wait)}</code>` : ''],
                  ['Judge', d.judge ? esc(d.judge.model + ' on ' + (d.judge.endpoint_id || '?') + (d.judge.estimate ? ', ' + fmtDur(d.judge.estimate.total_ms) : '')) : ''],
                ]) +
                candidates(d) +
                '</div>',
            )
            .join('')
      : D.loaded
        ? '<h3>Placement</h3><p class="muted">No placement decision is kept for this task.</p>'
        : '',
  );

  let verif = '';
  if (o && o.verification) {
    const v = o.verification;
    verif +=
      `<h3>Verification ${badge(v.verdict || '?', v.verdict === 'passed' ? 'ok' : v.verdict === 'failed' ? 'bad' : 'warn')}</h3>` +
      table(
        ['Step', 'Target', 'Result', 'Time', 'Evidence'],
        (v.steps || []).map((s) => [
          esc(s.kind),
          `<code>${esc(truncate(s.target, 80))}</code>`,
          s.passed ? badge('passed', 'ok') : badge('failed', 'bad'),
          esc(fmtDur(s.duration_ms)),
          (s.summary ? esc(s.summary) : '') +
            (s.evidence ? `<details><summary>evidence</summary><pre class="cmd">${esc(s.evidence)}</pre></details>` : ''),
        ]),
      );
  }
  if (o && Array.isArray(o.rounds) && o.rounds.length) {
    verif +=
      '<h3>Rounds</h3>' +
      table(
        ['#', 'Verdict', 'Failed', 'Changes', 'Tokens in/out', 'Cost'],
        o.rounds.map((r) => [
          esc(r.number),
          esc(r.verdict),
          esc((r.failed || []).map((f) => (typeof f === 'string' ? f : f && (f.kind || f.target) ? [f.kind, f.target].filter(Boolean).join(' ') : JSON.stringify(f))).join('; ') || DASH),
          r.diff_stat ? `<pre class="cmd">${esc(r.diff_stat)}</pre>` : DASH,
          esc(fmtNum(r.input_tokens) + ' / ' + fmtNum(r.output_tokens)),
          esc(fmtCost(r.cost_micros)),
        ]),
      );
  }
  if (o && o.workspace) {
    const ws = o.workspace;
    verif +=
      '<h3>Workspace</h3>' +
      dl([
        ['Repository', esc(ws.repository)],
        ['Base', ws.base ? `<code>${esc(ws.base)}</code>` : ''],
        ['Branch', esc(ws.branch || '')],
        ['Commit', ws.commit ? `<code>${esc(ws.commit)}</code>` : ''],
        ['Kept at', esc(ws.kept_at || '')],
        ['Pushed to', esc(ws.pushed_to || '')],
        ['Push error', ws.push_error ? `<span class="error-text">${esc(ws.push_error)}</span>` : ''],
      ]) +
      (ws.diff_stat ? `<pre class="cmd">${esc(ws.diff_stat)}</pre>` : '') +
      (ws.diff ? `<details><summary>diff (${esc(fmtBytes(ws.diff_total_bytes))})</summary><pre class="cmd">${esc(ws.diff)}</pre></details>` : '');
  }
  setHTML($('td-verif'), verif);

  let steps = [...D.steps.values()].sort((a, b) => a.attempt - b.attempt || a.number - b.number).map((e) => e.step);
  if (!steps.length && o && Array.isArray(o.steps)) steps = o.steps;
  setHTML(
    $('td-steps'),
    steps.length
      ? `<h3>Agent steps (${steps.length})</h3>` +
          table(
            ['Round', 'Tool', 'Summary', 'Result', 'OK', 'Tokens in/out'],
            steps.map((s) => [
              esc(s.round),
              `<code>${esc(s.tool)}</code>`,
              esc(truncate(s.summary, 160)),
              esc(fmtBytes(s.result_bytes)),
              s.ok ? badge('ok', 'ok') : badge('failed', 'bad'),
              s.input_tokens || s.output_tokens ? esc(fmtNum(s.input_tokens) + ' / ' + fmtNum(s.output_tokens)) : '',
            ]),
          )
      : '',
  );
}

function candidates(d) {
  const cs = Array.isArray(d.candidates) ? d.candidates : [];
  if (!cs.length) return '';
  const est = (e) => (e ? `${fmtDur(e.total_ms)} <small class="muted">(wait ${fmtDur(e.wait_ms)}, load ${fmtDur(e.load_ms)}, gen ${fmtDur(e.generate_ms)})</small>` : DASH);
  return (
    table(
      ['Sidecar', 'Agent', 'Endpoint', 'Verdict', 'Warm', 'In flight', 'Idle', 'Estimate'],
      cs.map((c) => [
        `<span class="mono">${esc(c.sidecar_id)}</span>`,
        `<span class="mono">${esc(c.agent_id || DASH)}</span>`,
        esc(c.endpoint_id || DASH),
        c.verdict === 'chosen' ? badge('chosen', 'ok') : esc(c.verdict),
        c.warm ? 'warm' : c.warm === false ? 'cold' : DASH,
        esc(c.in_flight),
        esc(c.idle_agents),
        est(c.estimate),
      ]),
      'cands',
    ) + (d.more_candidates ? `<p class="muted">and ${esc(d.more_candidates)} more candidates</p>` : '')
  );
}

/** The live output of a task: chunks appended in arrival order, duplicates skipped by offset. */
export class OutputView {
  constructor(pre) {
    this.pre = pre;
    this.reset();
  }

  reset() {
    this.pre.textContent = '';
    this.attempt = null;
    this.seen = { stdout: 0, stderr: 0 };
    this.dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    this.pending = [];
    this.shown = 0;
    this.cut = false;
    this.scheduled = false;
    this.gen = (this.gen || 0) + 1;
  }

  get received() {
    return this.seen.stdout + this.seen.stderr;
  }

  chunk(ev) {
    if (!ev || typeof ev.data_base64 !== 'string') return;
    const stream = ev.stream === 'stderr' ? 'stderr' : 'stdout';
    const attempt = isNum(ev.attempt) ? ev.attempt : 0;
    if (this.attempt === null) {
      this.attempt = attempt;
    } else if (attempt < this.attempt) {
      return;
    } else if (attempt > this.attempt) {
      this.attempt = attempt;
      this.seen = { stdout: 0, stderr: 0 };
      this.dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
      this.add(`\n\u2500\u2500 attempt ${attempt} \u2500\u2500\n`, 'note');
    }
    let bytes;
    try {
      const bin = atob(ev.data_base64);
      bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    } catch {
      return;
    }
    const off = isNum(ev.offset) ? ev.offset : this.seen[stream];
    const seen = this.seen[stream];
    if (off + bytes.length <= seen) return;
    if (off < seen) bytes = bytes.subarray(seen - off);
    this.seen[stream] = Math.max(seen, off) + bytes.length;
    const text = this.dec[stream].decode(bytes, { stream: true });
    if (text) this.add(text, stream);
  }

  /** Fills the view from a finished task's stored output when the stream gave none. */
  fill(stdout, stderr) {
    if (this.received || this.shown) return;
    if (stdout) this.add(stdout, 'stdout');
    if (stderr) this.add(stderr, 'stderr');
  }

  add(text, cls) {
    const LIMIT = 4 * 1024 * 1024;
    if (this.cut) return;
    if (this.shown + text.length > LIMIT) {
      text = text.slice(0, Math.max(0, LIMIT - this.shown));
      this.cut = true;
    }
    this.shown += text.length;
    const last = this.pending[this.pending.length - 1];
    if (last && last.cls === cls) last.text += text;
    else this.pending.push({ text, cls });
    if (this.cut) this.pending.push({ text: '\n[the view stops here: output over 4 MiB]\n', cls: 'note' });
    if (!this.scheduled) {
      this.scheduled = true;
      const gen = this.gen;
      requestAnimationFrame(() => this.flush(gen));
      setTimeout(() => this.flush(gen), 300);
    }
  }

  flush(gen) {
    if (gen !== this.gen || !this.pending.length) {
      this.scheduled = false;
      return;
    }
    this.scheduled = false;
    const pre = this.pre;
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 32;
    const frag = document.createDocumentFragment();
    for (const p of this.pending) {
      if (p.cls === 'stdout') {
        frag.append(p.text);
      } else {
        const span = document.createElement('span');
        span.className = p.cls;
        span.textContent = p.text;
        frag.append(span);
      }
    }
    this.pending = [];
    pre.append(frag);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
}

// --- LLM

function median(xs) {
  const v = xs.filter(isNum).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

function groupStats(runs, keyOf) {
  const groups = new Map();
  for (const r of runs) {
    const k = keyOf(r) || '?';
    let g = groups.get(k);
    if (!g) groups.set(k, (g = []));
    g.push(r);
  }
  return [...groups.entries()]
    .map(([key, rs]) => ({
      key,
      runs: rs,
      tps: median(rs.map((r) => r.u.output_tokens_per_s)),
      ttft: median(rs.map((r) => r.u.ttft_ms)),
      tin: rs.reduce((s, r) => s + (r.u.input_tokens || 0), 0),
      tout: rs.reduce((s, r) => s + (r.u.output_tokens || 0), 0),
      cost: rs.reduce((s, r) => s + (r.u.cost_micros || 0), 0),
    }))
    .sort((a, b) => b.runs.length - a.runs.length);
}

function statsTable(first, groups) {
  return (
    table(
      [first, 'Runs', 'Tokens/s (median)', 'tok/s trend', 'TTFT (median)', 'TTFT trend', 'Tokens in / out', 'Cost'],
      groups.map((g) => {
        const last = g.runs.slice(-60);
        return [
          `<span class="mono">${esc(g.key)}</span>`,
          esc(g.runs.length),
          isNum(g.tps) ? esc(g.tps.toFixed(1)) : DASH,
          sparkline(last.map((r) => r.u.output_tokens_per_s), { cls: 'tps', label: 'tokens per second, recent runs' }),
          isNum(g.ttft) ? esc(fmtNum(g.ttft) + ' ms') : DASH,
          sparkline(last.map((r) => r.u.ttft_ms), { cls: 'ttft', label: 'time to first token, recent runs' }),
          esc(fmtNum(g.tin) + ' / ' + fmtNum(g.tout)),
          esc(fmtCost(g.cost)),
        ];
      }),
      'stats',
    ) || '<p class="muted">No LLM results yet.</p>'
  );
}

export function renderLlm(S) {
  const runs = [];
  for (const t of S.tasks.values()) {
    const u = t.outcome && t.outcome.usage;
    if (!u || typeof u !== 'object') continue;
    const at = t.finished_unix_ms || t.updated_unix_ms;
    if (!isNum(at)) continue;
    runs.push({ t, u, at });
  }
  runs.sort((a, b) => a.at - b.at);
  const models = groupStats(runs, (r) => r.u.model);
  const hosts = groupStats(runs, (r) => r.t.sidecar_id);
  const top = models.slice(0, 6);
  const seriesOf = (field) => top.map((g, i) => ({ name: g.key, cls: 'c' + i, points: g.runs.map((r) => [r.at, r.u[field]]) }));
  const spanDays = runs.length ? (runs[runs.length - 1].at - runs[0].at) / 86400000 : 0;
  const tfmt = spanDays > 1 ? (t) => new Date(t).toLocaleDateString([], { month: 'short', day: 'numeric' }) : fmtClock;

  const days = new Map();
  for (const r of runs) {
    const d = new Date(r.at);
    const key = d.getFullYear() + '-' + String(d.getMonth() + 1).padStart(2, '0') + '-' + String(d.getDate()).padStart(2, '0');
    const e = days.get(key) || { cost: 0, n: 0, tokens: 0 };
    e.cost += r.u.cost_micros || 0;
    e.tokens += (r.u.input_tokens || 0) + (r.u.output_tokens || 0);
    e.n++;
    days.set(key, e);
  }
  const dayItems = [...days.entries()].sort((a, b) => (a[0] < b[0] ? 1 : -1)).slice(0, 14)
    .map(([k, e]) => ({ label: k, value: e.cost, text: `${fmtCost(e.cost)} · ${e.n} runs · ${fmtNum(e.tokens)} tokens` }));
  const total = runs.reduce((s, r) => s + (r.u.cost_micros || 0), 0);

  setHTML(
    $('llm-content'),
    `<p class="muted">${runs.length} finished LLM runs among the ${S.tasks.size} tasks loaded · total cost ${esc(fmtCost(total))}</p>` +
      '<div class="grid2">' +
      `<section class="card"><h3>Tokens per second by model</h3>${lineChart(seriesOf('output_tokens_per_s'), { label: 'tokens per second over time by model', tfmt, fmt: (v) => v.toFixed(0) })}</section>` +
      `<section class="card"><h3>Time to first token by model</h3>${lineChart(seriesOf('ttft_ms'), { label: 'time to first token over time by model', tfmt, fmt: (v) => fmtDur(v) })}</section>` +
      '</div>' +
      `<section class="card"><h3>By model</h3>${statsTable('Model', models)}</section>` +
      `<section class="card"><h3>By host</h3>${statsTable('Host', hosts)}</section>` +
      `<section class="card"><h3>Cost per day</h3>${bars(dayItems, 'cost per day')}</section>`,
  );
}

