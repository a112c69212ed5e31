// The dashboard's entry: sign-in, hash routing, the data store, the fleet event stream,
// task detail streams and the render loop (coalesced per animation frame, visible view only).

import { ApiError, api, clearToken, enc, getToken, onUnauthorized, setToken } from './api.js';
import { openStream } from './sse.js';
import * as V from './views.js';
import * as WF from './workflows.js';
import * as SV from './services.js';
import { FINAL, fmtDur, isNum, nextFrame } from './util.js';

const $ = (id) => document.getElementById(id);
const root = document.documentElement;
const VIEWS = ['fleet', 'queue', 'tasks', 'task', 'workflows', 'workflow', 'llm'];
const TASK_CAP = 5000;

const S = {
  agents: new Map(),
  hosts: new Map(),
  hist: new Map(), // host id -> { at, samples }
  endpoints: [],
  queue: null,
  samples: [], // { t, lanes, ready, blocked }, every 2 s
  tasks: new Map(),
  dlq: [],
  blocked: [],
  agentsLoaded: false,
  hostsLoaded: false,
  tasksLoaded: false,
  dlqLoaded: false,
  blockedLoaded: false,
  llmLoaded: false,
  llmAt: 0,
  dlqAt: 0,
  services: [], // service tasks that have not ended (GET /api/v1/services)
  runs: new Map(), // workflow runs, as lists show them
  runsLoaded: false,
  taskFilter: { state: '', text: '' },
  taskLimit: 200,
};

let route = { view: 'fleet', id: null };
let signedIn = false;
let fleet = null; // the fleet stream
let wasLive = false;
let readyMarked = false;
let D = null; // the open task detail
let W = null; // the open workflow run: { id, step, run, error, busy, again }
// Snapshots are fetched once the fleet stream is live (its `ready`), so that no change falls
// between a snapshot and the stream, and a refused token costs one request, not ten.
let booted = false;
let bootTimer = null;
let streamGone = false; // the hub has no fleet stream: poll instead

// --- Render scheduling

const dirty = { fleetAll: false, hosts: new Set(), endpoints: false, services: false, queue: false, tasks: false, task: false, workflows: false, workflow: false, llm: false };
let scheduled = false;

function schedule() {
  if (scheduled) return;
  scheduled = true;
  nextFrame(flush);
}

function touch(what) {
  dirty[what] = true;
  schedule();
}

function touchHost(id) {
  dirty.hosts.add(id);
  schedule();
}

const ctx = { observeHost: (el) => observeHost(el) };

function flush() {
  scheduled = false;
  if (!signedIn) return;
  const v = route.view;
  // The first fleet view waits for both its snapshots: one render, not a partial one and then
  // the whole again (1,000 agents' cells are the costly part).
  if (v === 'fleet' && !readyMarked && !hasData(v)) return;
  try {
    if (v === 'fleet') {
      if (dirty.fleetAll) {
        V.renderFleet(S, ctx, null);
        SV.renderServices(S);
        dirty.fleetAll = false;
        dirty.endpoints = false;
        dirty.services = false;
        dirty.hosts.clear();
      } else {
        if (dirty.hosts.size) {
          const only = dirty.hosts;
          dirty.hosts = new Set();
          V.renderFleet(S, ctx, only);
        }
        if (dirty.endpoints) {
          dirty.endpoints = false;
          V.renderEndpoints(S);
        }
      }
      if (dirty.services) {
        dirty.services = false;
        SV.renderServices(S);
      }
    } else if (v === 'queue' && dirty.queue) {
      dirty.queue = false;
      V.renderQueue(S);
    } else if (v === 'tasks' && dirty.tasks) {
      dirty.tasks = false;
      V.renderTasks(S);
    } else if (v === 'task' && dirty.task && D) {
      dirty.task = false;
      V.renderTaskDetail(D);
    } else if (v === 'workflows' && dirty.workflows) {
      dirty.workflows = false;
      WF.renderRuns(S);
    } else if (v === 'workflow' && dirty.workflow && W) {
      dirty.workflow = false;
      WF.renderRun(W);
    } else if (v === 'llm' && dirty.llm) {
      dirty.llm = false;
      if (S.llmLoaded) V.renderLlm(S);
    }
  } catch (e) {
    showErr(v, 'The page could not draw this view: ' + (e && e.message));
  }
  markReady(v);
}

function hasData(v) {
  if (v === 'fleet') return S.agentsLoaded && S.hostsLoaded;
  if (v === 'queue') return !!S.queue;
  if (v === 'tasks') return S.tasksLoaded;
  if (v === 'task') return !!(D && (D.task || D.error));
  if (v === 'workflows') return S.runsLoaded;
  if (v === 'workflow') return !!(W && (W.run || W.error));
  if (v === 'llm') return S.llmLoaded;
  return false;
}

function markReady(v) {
  if (readyMarked || !hasData(v)) return;
  readyMarked = true;
  root.dataset.ready = '1';
  window.__agentcomFirstRender = performance.now();
}

// --- Errors and toasts

const ERR_VIEW = { fleet: 'fleet-err', queue: 'queue-err', tasks: 'tasks-err', task: 'task-err', workflows: 'workflows-err', workflow: 'workflow-err', llm: 'llm-err' };

function showErr(view, message) {
  const el = $(ERR_VIEW[view]);
  if (!el) return;
  el.textContent = message;
  el.hidden = !message;
}

function quiet(e) {
  return (e && e.name === 'AbortError') || (e instanceof ApiError && e.status === 401);
}

function failed(view, what) {
  return (e) => {
    if (quiet(e)) return;
    showErr(view, `${what}: ${(e && e.message) || e}`);
  };
}

function toast(message, kind = 'info') {
  const box = $('toasts');
  const el = document.createElement('div');
  el.className = 'toast ' + kind;
  el.textContent = message;
  box.append(el);
  while (box.childElementCount > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 5000);
}

function errToast(prefix) {
  return (e) => {
    if (quiet(e)) return;
    toast(`${prefix}: ${(e && e.message) || e}`, 'error');
  };
}

// --- Store updates. A snapshot never replaces something newer that an event already brought.

const seq = {};
const applied = {};
async function fetchLatest(key, path, opts) {
  const n = (seq[key] = (seq[key] || 0) + 1);
  const data = await api(path, opts);
  if (n < (applied[key] || 0)) return null;
  applied[key] = n;
  return data;
}

const taskTime = (t) => (isNum(t.updated_unix_ms) ? t.updated_unix_ms : 0);

function upsertTask(t) {
  if (!t || typeof t.id !== 'string') return false;
  const old = S.tasks.get(t.id);
  if (old && taskTime(old) > taskTime(t)) return false;
  S.tasks.set(t.id, t);
  if (S.dlqLoaded) {
    const i = S.dlq.findIndex((x) => x.id === t.id);
    if (t.state === 'dead_lettered') {
      if (i < 0) S.dlq.unshift(t);
      else S.dlq[i] = t;
    } else if (i >= 0) {
      S.dlq.splice(i, 1);
    }
  }
  return true;
}

function pruneTasks() {
  if (S.tasks.size <= TASK_CAP) return;
  const all = [...S.tasks.values()].sort((a, b) => (a.created_unix_ms || 0) - (b.created_unix_ms || 0));
  for (const t of all) {
    if (S.tasks.size <= TASK_CAP) break;
    if (FINAL.has(t.state) && (!D || D.id !== t.id)) S.tasks.delete(t.id);
  }
}

function tasksChanged() {
  touch('tasks');
  touch('llm');
  touch('queue');
}

const agentTime = (a) => Math.max(a.state_since_unix_ms || 0, a.last_seen_unix_ms || 0);
const hostTime = (h) => Math.max(h.last_seen_unix_ms || 0, (h.resources && h.resources.at_unix_ms) || 0);

function setAgents(list) {
  const next = new Map();
  for (const a of list) {
    if (!a || typeof a.id !== 'string') continue;
    const old = S.agents.get(a.id);
    next.set(a.id, old && agentTime(old) > agentTime(a) ? old : a);
  }
  S.agents = next;
  S.agentsLoaded = true;
  dirty.fleetAll = true;
  schedule();
}

function mergeHost(h) {
  if (!h || typeof h.id !== 'string') return;
  if (h.history) {
    const { history, ...rest } = h;
    h = rest;
  }
  const old = S.hosts.get(h.id);
  if (old && hostTime(old) > hostTime(h) && !!old.cordon === !!h.cordon) return;
  S.hosts.set(h.id, h);
  const hist = S.hist.get(h.id);
  const r = h.resources;
  if (hist && r && isNum(r.at_unix_ms)) {
    const last = hist.samples[hist.samples.length - 1];
    if (!last || r.at_unix_ms > last.at_unix_ms) {
      const gpus = Array.isArray(r.gpus) ? r.gpus : [];
      const utils = gpus.map((g) => g.utilization_percent).filter(isNum);
      hist.samples.push({
        at_unix_ms: r.at_unix_ms,
        cpu_percent: r.cpu_percent,
        load1: r.load1,
        memory_used_bytes: r.memory_used_bytes,
        gpu_utilization_percent: utils.length ? utils.reduce((a, b) => a + b, 0) / utils.length : null,
        gpu_memory_used_bytes: gpus.reduce((a, g) => a + (g.memory_used_bytes || 0), 0),
      });
      const cut = r.at_unix_ms - 3600000;
      while (hist.samples.length > 720 || (hist.samples.length && hist.samples[0].at_unix_ms < cut)) hist.samples.shift();
    }
  }
  touchHost(h.id);
}

function setQueue(q) {
  if (!q || typeof q !== 'object') return;
  S.queue = q;
  if (!S.samples.length) sampleQueue();
  touch('queue');
}

function sampleQueue() {
  const q = S.queue;
  if (!q) return;
  const lanes = q.ready_by_lane && typeof q.ready_by_lane === 'object' ? { ...q.ready_by_lane } : null;
  S.samples.push({ t: Date.now(), lanes, ready: q.ready, blocked: q.blocked });
  while (S.samples.length > 900) S.samples.shift();
}

// --- Loaders

function loadAgents() {
  return fetchLatest('agents', '/api/v1/agents')
    .then((d) => {
      if (!d) return;
      setAgents(Array.isArray(d.agents) ? d.agents : []);
      showErr('fleet', '');
    })
    .catch(failed('fleet', 'Agents could not be loaded'));
}

function loadHosts() {
  return fetchLatest('hosts', '/api/v1/hosts')
    .then((d) => {
      if (!d) return;
      const list = Array.isArray(d.hosts) ? d.hosts : [];
      const ids = new Set(list.map((h) => h && h.id));
      for (const id of [...S.hosts.keys()]) if (!ids.has(id)) S.hosts.delete(id);
      for (const h of list) mergeHost(h);
      S.hostsLoaded = true;
      dirty.fleetAll = true;
      schedule();
      pumpHistory();
    })
    .catch(failed('fleet', 'Hosts could not be loaded'));
}

function loadEndpoints() {
  return fetchLatest('endpoints', '/api/v1/endpoints')
    .then((d) => {
      if (!d) return;
      S.endpoints = Array.isArray(d.endpoints) ? d.endpoints : [];
      touch('endpoints');
    })
    .catch(failed('fleet', 'Endpoints could not be loaded'));
}

function loadServices() {
  return fetchLatest('services', '/api/v1/services')
    .then((d) => {
      if (!d) return;
      S.services = Array.isArray(d.services) ? d.services : [];
      touch('services');
    })
    .catch(failed('fleet', 'Services could not be loaded'));
}

function loadQueue() {
  return fetchLatest('queue', '/api/v1/queue')
    .then((d) => {
      if (!d) return;
      setQueue(d.queue);
      showErr('queue', '');
    })
    .catch(failed('queue', 'The queue could not be loaded'));
}

function loadTasks(state) {
  const path = '/api/v1/tasks?limit=500' + (state ? '&state=' + enc(state) : '');
  return fetchLatest('tasks:' + state, path)
    .then((d) => {
      if (!d) return;
      for (const t of Array.isArray(d.tasks) ? d.tasks : []) upsertTask(t);
      pruneTasks();
      S.tasksLoaded = true;
      showErr('tasks', '');
      tasksChanged();
    })
    .catch(failed('tasks', 'Tasks could not be loaded'));
}

function loadDlq() {
  S.dlqAt = Date.now();
  return fetchLatest('dlq', '/api/v1/dlq?limit=200')
    .then((d) => {
      if (!d) return;
      S.dlq = (Array.isArray(d.tasks) ? d.tasks : []).filter((t) => t && t.id);
      for (const t of S.dlq) upsertTask(t);
      S.dlqLoaded = true;
      touch('queue');
    })
    .catch(failed('queue', 'Dead letters could not be loaded'));
}

let blockedBusy = false;
async function loadBlocked() {
  if (blockedBusy) return;
  blockedBusy = true;
  try {
    const [a, b] = await Promise.all([
      api('/api/v1/tasks?state=queued&limit=200'),
      api('/api/v1/tasks?state=ready&limit=200'),
    ]);
    const waiting = [...(a.tasks || []), ...(b.tasks || [])].filter((t) => t && t.id);
    waiting.sort((x, y) => (x.created_unix_ms || 0) - (y.created_unix_ms || 0));
    const first = waiting.slice(0, 20);
    const whys = await Promise.all(
      first.map((t) =>
        api(`/api/v1/tasks/${enc(t.id)}/why`).then(
          (d) => d.why || null,
          (e) => {
            if (e instanceof ApiError && e.status === 401) throw e;
            return null;
          },
        ),
      ),
    );
    S.blocked = first.map((task, i) => ({ task, why: whys[i] })).filter((x) => x.why);
    S.blockedLoaded = true;
    touch('queue');
  } catch (e) {
    failed('queue', 'Blocked tasks could not be loaded')(e);
  } finally {
    blockedBusy = false;
  }
}

function loadLlm() {
  S.llmAt = Date.now();
  return Promise.all([
    api('/api/v1/tasks?state=succeeded&limit=1000'),
    api('/api/v1/tasks?state=failed&limit=300'),
  ])
    .then(([a, b]) => {
      for (const t of [...(a.tasks || []), ...(b.tasks || [])]) upsertTask(t);
      pruneTasks();
      S.llmLoaded = true;
      showErr('llm', '');
      tasksChanged();
    })
    .catch(failed('llm', 'LLM results could not be loaded'));
}

// --- Workflow runs

const runTime = (r) => Math.max(r.ended_unix_ms || 0, r.created_unix_ms || 0);

function upsertRun(r) {
  if (!r || typeof r.id !== 'string') return;
  const { steps, graph, ...summary } = r;
  S.runs.set(r.id, summary);
  touch('workflows');
}

function loadRuns() {
  return fetchLatest('runs', '/api/v1/workflows/runs?limit=200')
    .then((d) => {
      if (!d) return;
      const runs = Array.isArray(d.runs) ? d.runs : [];
      S.runs = new Map();
      for (const r of runs) upsertRun(r);
      S.runsLoaded = true;
      showErr('workflows', '');
      touch('workflows');
    })
    .catch(failed('workflows', 'Workflow runs could not be loaded'));
}

/** Fetches the open run; a change while a fetch is out fetches once more after it. */
function loadRun(w) {
  if (w.busy) {
    w.again = true;
    return;
  }
  w.busy = true;
  api(`/api/v1/workflows/runs/${enc(w.id)}`, { signal: w.ctl.signal })
    .then((d) => {
      if (W !== w) return;
      w.run = d.run;
      w.error = null;
      upsertRun(d.run);
      showErr('workflow', '');
    })
    .catch((e) => {
      if (W !== w || quiet(e)) return;
      w.error = e;
      showErr('workflow', e instanceof ApiError && e.status === 404 ? `No workflow run ${w.id}.` : `The run could not be loaded: ${(e && e.message) || e}`);
    })
    .finally(() => {
      w.busy = false;
      if (W !== w) return;
      touch('workflow');
      if (w.again) {
        w.again = false;
        loadRun(w);
      }
    });
}

function openRun(id, step) {
  if (W && W.id === id) {
    W.step = step;
    touch('workflow');
    loadRun(W);
    return;
  }
  closeRun();
  W = { id, step, run: null, error: null, busy: false, again: false, ctl: new AbortController() };
  touch('workflow');
  loadRun(W);
}

function closeRun() {
  if (!W) return;
  W.ctl.abort();
  W = null;
}

function runAction(btn, action) {
  const id = btn.dataset.id;
  act(btn, 'POST', `/api/v1/workflows/runs/${enc(id)}/${action}`, (d) => {
    if (d.run) {
      upsertRun(d.run);
      if (W && W.id === id) {
        W.run = d.run;
        touch('workflow');
      }
    }
    toast(action === 'cancel' ? `Run ${id} is cancelled.` : `Run ${id} goes again from its failed steps.`);
  }, action === 'cancel' ? 'Cancel failed' : 'Retry failed');
}

function refreshBase() {
  loadAgents();
  loadHosts();
  loadEndpoints();
  loadServices();
  loadQueue();
}

function refreshView() {
  const v = route.view;
  if (S.tasksLoaded || v === 'tasks') loadTasks(S.taskFilter.state);
  if (v === 'queue') {
    loadDlq();
    loadBlocked();
  }
  if (v === 'llm') loadLlm();
  if (v === 'workflows') loadRuns();
  if (v === 'workflow' && W) loadRun(W);
  if (v === 'task' && D && D.task && !FINAL.has(D.task.state)) loadDetailExtras(D);
}

// --- Host history (sparklines): fetched for cards on screen, at most every 30 s per host

const visibleHosts = new Set();
const histBusy = new Set();
const io =
  typeof IntersectionObserver === 'function'
    ? new IntersectionObserver(
        (entries) => {
          for (const e of entries) {
            const id = e.target.dataset.host;
            if (e.isIntersecting) visibleHosts.add(id);
            else visibleHosts.delete(id);
          }
          pumpHistory();
        },
        { rootMargin: '300px' },
      )
    : null;

function observeHost(el) {
  if (io) io.observe(el);
  else visibleHosts.add(el.dataset.host);
}

function pumpHistory() {
  if (!signedIn || route.view !== 'fleet') return;
  const now = Date.now();
  for (const id of visibleHosts) {
    if (histBusy.size >= 4) return;
    if (histBusy.has(id) || !S.hosts.has(id)) continue;
    const h = S.hist.get(id);
    if (h && now - h.at < 30000) continue;
    histBusy.add(id);
    api(`/api/v1/hosts/${enc(id)}`)
      .then((d) => {
        const host = d.host || {};
        const samples = (Array.isArray(host.history) ? host.history : []).filter((s) => s && isNum(s.at_unix_ms));
        const old = S.hist.get(id);
        if (old && old.samples.length) {
          // Keep live samples newer than the fetched history.
          const last = samples.length ? samples[samples.length - 1].at_unix_ms : 0;
          for (const s of old.samples) if (s.at_unix_ms > last) samples.push(s);
        }
        S.hist.set(id, { at: Date.now(), samples });
        if (host.id) mergeHost(host);
        touchHost(id);
      })
      .catch((e) => {
        if (!quiet(e)) S.hist.set(id, { at: Date.now(), samples: (S.hist.get(id) || { samples: [] }).samples });
      })
      .finally(() => {
        histBusy.delete(id);
        pumpHistory();
      });
  }
}

// --- The fleet event stream

function setLive(state, info) {
  const el = $('live');
  el.dataset.state = state;
  let text;
  if (state === 'live') {
    wasLive = true;
    text = 'live';
  } else if (state === 'connecting') {
    text = wasLive ? 'reconnecting…' : 'connecting…';
  } else {
    text = info && isNum(info.retryMs) ? 'offline, retrying' : info && info.status ? 'no live updates' : 'offline';
  }
  el.textContent = text;
}

function boot() {
  if (booted || !signedIn) return;
  booted = true;
  clearTimeout(bootTimer);
  refreshBase();
  enterView();
}

function startFleetStream() {
  if (fleet) fleet.close();
  fleet = openStream('/api/v1/events', {
    onStatus(state, info) {
      setLive(state, info);
      streamGone = !!(info && info.status);
      // No stream (yet): show the snapshots anyway and keep trying.
      if (state !== 'live' && !(info && info.unauthorized) && info && (info.failures || info.status || info.ended)) boot();
    },
    onEvent(name, data) {
      switch (name) {
        case 'ready':
        case 'resync':
          if (!booted) {
            boot();
          } else {
            refreshBase();
            refreshView();
          }
          break;
        case 'task': {
          const service = SV.serviceChanged(S, data);
          if (service === null) loadServices();
          else if (service) touch('services');
          if (upsertTask(data)) {
            if (D && D.id === data.id && (!D.task || taskTime(data) > taskTime(D.task))) {
              // A summary: keep the output the detail already has.
              D.task = D.task && D.task.outcome && data.outcome ? { ...data, outcome: { ...data.outcome, stdout: D.task.outcome.stdout, stderr: D.task.outcome.stderr } } : data;
              touch('task');
            }
            tasksChanged();
          }
          break;
        }
        case 'agent':
          if (data && typeof data.id === 'string') {
            const old = S.agents.get(data.id);
            if (old && old.sidecar_id !== data.sidecar_id) touchHost(old.sidecar_id);
            S.agents.set(data.id, data);
            touchHost(data.sidecar_id || data.hostname || '?');
          }
          break;
        case 'host':
          mergeHost(data);
          break;
        case 'endpoints':
          if (data && Array.isArray(data.endpoints)) {
            S.endpoints = data.endpoints;
            touch('endpoints');
          }
          break;
        case 'queue':
          if (data) setQueue(data.queue && typeof data.queue === 'object' ? data.queue : data);
          break;
        case 'run':
          if (data && data.run) {
            const old = S.runs.get(data.run.id);
            if (!old || runTime(data.run) >= runTime(old)) upsertRun(data.run);
            if (W && W.id === data.run.id) loadRun(W);
          }
          break;
        default:
      }
    },
    // Without the fleet stream (an older hub) the page polls instead.
    onHttpError: (status) => status !== 404 && status !== 405,
  });
}

// --- Task detail

function loadDetailExtras(d) {
  api(`/api/v1/tasks/${enc(d.id)}/decision`, { signal: d.ctl.signal })
    .then((r) => {
      d.decisions = Array.isArray(r.decisions) ? r.decisions : [];
      d.loaded = true;
      touch('task');
    })
    .catch((e) => {
      if (quiet(e)) return;
      d.loaded = true;
      touch('task');
    });
  if (d.task && FINAL.has(d.task.state)) {
    d.why = null;
    return;
  }
  api(`/api/v1/tasks/${enc(d.id)}/why`, { signal: d.ctl.signal })
    .then((r) => {
      d.why = r.why || null;
      touch('task');
    })
    .catch(() => {});
}

function setDetailTask(d, t) {
  if (!t || t.id !== d.id) return;
  const before = d.task && d.task.state;
  if (d.task && taskTime(d.task) > taskTime(t)) return;
  d.task = t;
  upsertTask(t);
  if (d.stream && before && before !== t.state) loadDetailExtras(d);
  touch('task');
}

function openDetail(id) {
  if (D && D.id === id) {
    touch('task');
    return;
  }
  closeDetail();
  const d = {
    id,
    task: S.tasks.get(id) || null,
    decisions: [],
    why: null,
    steps: new Map(),
    error: '',
    loaded: false,
    ctl: new AbortController(),
    stream: null,
    output: new V.OutputView($('task-output')),
  };
  D = d;
  showErr('task', '');
  V.renderTaskDetail(d);
  // The task first: an unknown id then costs one request, not four.
  api(`/api/v1/tasks/${enc(id)}`, { signal: d.ctl.signal })
    .then((r) => {
      if (D !== d) return;
      if (r.task) setDetailTask(d, r.task);
      d.error = '';
      touch('task');
      loadDetailExtras(d);
      watchTask(d);
    })
    .catch((e) => {
      if (quiet(e) || D !== d) return;
      d.error = e instanceof ApiError && e.status === 404 ? 'No task has this id.' : `The task could not be loaded: ${e.message}`;
      if (e instanceof ApiError && e.status === 404) d.task = null;
      else showErr('task', d.error);
      touch('task');
    });
}

function watchTask(d) {
  const streamNote = $('td-stream');
  d.stream = openStream(`/api/v1/tasks/${enc(d.id)}/events`, {
    onStatus(state, info) {
      if (D !== d) return;
      if (info && info.ended) {
        streamNote.textContent = '';
        if (d.task && d.task.outcome) d.output.fill(d.task.outcome.stdout, d.task.outcome.stderr);
        return;
      }
      streamNote.textContent = state === 'live' ? (d.task && FINAL.has(d.task.state) ? '' : '· live') : state === 'connecting' ? '· connecting…' : '· offline';
    },
    onEvent(name, data) {
      if (D !== d || !data) return;
      if (name === 'snapshot') setDetailTask(d, data);
      else if (name === 'output') d.output.chunk(data);
      else if (name === 'step' && data.step) {
        d.steps.set(`${data.attempt}:${data.number}`, data);
        touch('task');
      }
    },
    shouldReconnect: () => !(d.task && FINAL.has(d.task.state)),
    onHttpError: (status) => status !== 404 && status !== 400,
  });
}

function closeDetail() {
  if (!D) return;
  if (D.stream) D.stream.close();
  D.ctl.abort();
  D = null;
}

// --- Routing

function parseRoute() {
  const h = location.hash || '';
  const run = /^#\/workflows\/([^/?#]+)(?:\/([^/?#]+))?/.exec(h);
  if (run) {
    const decode = (x) => {
      try {
        return decodeURIComponent(x);
      } catch {
        return x;
      }
    };
    return { view: 'workflow', id: decode(run[1]), step: run[2] ? decode(run[2]) : null };
  }
  const m = /^#\/tasks\/([^/?#]+)/.exec(h);
  if (m) {
    let id = m[1];
    try {
      id = decodeURIComponent(id);
    } catch {
      /* keep it raw */
    }
    return { view: 'task', id };
  }
  const v = (/^#\/(\w+)/.exec(h) || [])[1];
  return { view: ['fleet', 'queue', 'tasks', 'workflows', 'llm'].includes(v) ? v : 'fleet', id: null };
}

function onRoute() {
  if (!signedIn) return;
  route = parseRoute();
  if (route.view !== 'task' || (D && D.id !== route.id)) closeDetail();
  if (route.view !== 'workflow') closeRun();
  for (const v of VIEWS) $('view-' + v).hidden = v !== route.view;
  $('view-login').hidden = true;
  const navKey = route.view === 'task' ? 'tasks' : route.view === 'workflow' ? 'workflows' : route.view;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === navKey) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const title = route.view === 'task' ? 'Task ' + route.id : route.view === 'workflow' ? 'Run ' + route.id : route.view[0].toUpperCase() + route.view.slice(1);
  document.title = title + ' · AgentCom';
  enterView();
}

function enterView() {
  const v = route.view;
  if (!booted) {
    touch(v === 'fleet' ? 'fleetAll' : v);
    return;
  }
  if (v === 'fleet') {
    dirty.fleetAll = true;
    schedule();
    pumpHistory();
  } else if (v === 'queue') {
    touch('queue');
    loadDlq();
    loadBlocked();
  } else if (v === 'tasks') {
    $('task-state').value = S.taskFilter.state;
    $('task-filter').value = S.taskFilter.text;
    if (!S.tasksLoaded) loadTasks(S.taskFilter.state);
    touch('tasks');
  } else if (v === 'task') {
    openDetail(route.id);
  } else if (v === 'workflows') {
    loadRuns();
    touch('workflows');
  } else if (v === 'workflow') {
    openRun(route.id, route.step);
  } else if (v === 'llm') {
    if (!S.llmLoaded || Date.now() - S.llmAt > 60000) loadLlm();
    touch('llm');
  }
}

// --- Sign-in

function resetStore() {
  S.agents = new Map();
  S.hosts = new Map();
  S.hist = new Map();
  S.endpoints = [];
  S.queue = null;
  S.samples = [];
  S.tasks = new Map();
  S.dlq = [];
  S.blocked = [];
  S.runs = new Map();
  S.runsLoaded = false;
  S.agentsLoaded = S.hostsLoaded = S.tasksLoaded = S.dlqLoaded = S.blockedLoaded = S.llmLoaded = false;
}

function stopAll() {
  signedIn = false;
  booted = false;
  clearTimeout(bootTimer);
  if (fleet) fleet.close();
  fleet = null;
  closeDetail();
  closeRun();
}

function showLogin(message) {
  stopAll();
  for (const v of VIEWS) $('view-' + v).hidden = true;
  $('nav').hidden = true;
  $('signout').hidden = true;
  $('view-login').hidden = false;
  $('login-error').textContent = message || '';
  setLive('offline');
  $('live').textContent = 'signed out';
  const input = $('token');
  input.value = '';
  input.focus();
}

function start() {
  signedIn = true;
  booted = false;
  clearTimeout(bootTimer);
  bootTimer = setTimeout(boot, 1500);
  $('view-login').hidden = true;
  $('nav').hidden = false;
  $('signout').hidden = false;
  $('login-error').textContent = '';
  startFleetStream();
  onRoute();
}

onUnauthorized(() => {
  if (!signedIn) return;
  clearToken();
  showLogin('The hub refused this token. Sign in again.');
});

// --- Theme

const THEME_KEY = 'agentcom.theme';

function storedTheme() {
  try {
    return localStorage.getItem(THEME_KEY);
  } catch {
    return null;
  }
}

function applyTheme() {
  const t = storedTheme();
  const dark = t === 'dark' || (t !== 'light' && !!window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches);
  root.dataset.theme = dark ? 'dark' : 'light';
  const btn = $('theme-toggle');
  btn.textContent = dark ? 'Light' : 'Dark';
  btn.setAttribute('aria-label', dark ? 'Switch to the light theme' : 'Switch to the dark theme');
}


// --- Actions

const busy = new Set();

/** One API action per button at a time; the answer updates the store, a toast says how it went. */
function act(btn, method, path, done, failure) {
  if (busy.has(path)) return;
  busy.add(path);
  btn.setAttribute('aria-busy', 'true');
  api(path, { method })
    .then(done)
    .catch(errToast(failure))
    .finally(() => {
      busy.delete(path);
      btn.removeAttribute('aria-busy');
    });
}

function hostAction(btn, action) {
  const id = btn.dataset.host;
  const host = S.hosts.get(id);
  const name = (host && host.hostname) || id;
  act(btn, 'POST', `/api/v1/hosts/${enc(id)}/${action}`, (d) => {
    if (d.host) {
      // The answer is newer than anything we hold: take it as it is.
      const { history, ...h } = d.host;
      S.hosts.set(id, h.resources || !host ? h : { ...h, resources: host.resources });
      touchHost(id);
    }
    toast(action === 'drain' ? `${name} is draining: it takes no new work.` : `${name} takes work again.`);
  }, `${action === 'drain' ? 'Drain' : 'Uncordon'} of ${name} failed`);
}

function taskAction(btn, method, path, message, failure) {
  const id = btn.dataset.id;
  act(btn, method, path, (d) => {
    if (method === 'POST') S.dlq = S.dlq.filter((t) => t.id !== id);
    if (d.task) {
      upsertTask(d.task);
      if (D && D.id === id) setDetailTask(D, d.task);
    }
    tasksChanged();
    toast(`Task ${id} ${message}.`);
    loadQueue();
  }, failure);
}

document.addEventListener('click', (e) => {
  const el = e.target instanceof Element ? e.target.closest('[data-action]') : null;
  if (!el) return;
  const action = el.dataset.action;
  if (action === 'skip') {
    e.preventDefault();
    $('main').focus();
  } else if (action === 'drain' || action === 'uncordon') {
    hostAction(el, action);
  } else if (action === 'retry') {
    taskAction(el, 'POST', `/api/v1/dlq/${enc(el.dataset.id)}/retry`, 'is queued again', 'Retry failed');
  } else if (action === 'cancel') {
    taskAction(el, 'DELETE', `/api/v1/tasks/${enc(el.dataset.id)}`, 'is cancelled', 'Cancel failed');
  } else if (action === 'run-cancel' || action === 'run-retry') {
    runAction(el, action.slice(4));
  } else if (action === 'more') {
    S.taskLimit += 200;
    touch('tasks');
  } else if (action === 'theme') {
    const next = root.dataset.theme === 'dark' ? 'light' : 'dark';
    try {
      localStorage.setItem(THEME_KEY, next);
    } catch {
      /* not remembered */
    }
    applyTheme(); // charts take their colours from CSS: nothing to redraw
  } else if (action === 'signout') {
    clearToken();
    resetStore();
    V.resetFleet();
    showLogin('Signed out.');
  }
});

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $('token');
  const value = input.value.trim();
  input.value = '';
  if (!value) {
    $('login-error').textContent = 'Enter a token.';
    input.focus();
    return;
  }
  setToken(value);
  start();
  $('main').focus();
});

$('task-filters').addEventListener('submit', (e) => e.preventDefault());
$('task-filter').addEventListener('input', (e) => {
  S.taskFilter.text = e.target.value;
  S.taskLimit = 200;
  touch('tasks');
});
$('task-state').addEventListener('change', (e) => {
  S.taskFilter.state = e.target.value;
  S.taskLimit = 200;
  if (S.taskFilter.state) loadTasks(S.taskFilter.state);
  touch('tasks');
});

window.addEventListener('hashchange', () => {
  if (tokenFromHash()) {
    stopAll();
    start();
  } else {
    onRoute();
  }
});
if (window.matchMedia) {
  const mq = window.matchMedia('(prefers-color-scheme: dark)');
  if (mq.addEventListener) mq.addEventListener('change', applyTheme);
}

// --- Timers: ages every second, queue samples every 2 s, slower refreshes

let tick = 0;
setInterval(() => {
  if (!signedIn) return;
  tick++;
  const v = route.view;
  const now = Date.now();
  const section = $('view-' + v);
  if (section) for (const el of section.querySelectorAll('[data-age]')) el.textContent = fmtDur(now - Number(el.dataset.age));
  if (tick % 2 === 0) {
    sampleQueue();
    if (v === 'queue') V.renderQueueChart(S);
  }
  if (v === 'queue' && tick % 10 === 0) {
    loadBlocked();
    if (now - S.dlqAt > 30000) loadDlq();
  }
  if (v === 'fleet' && tick % 30 === 0) {
    dirty.fleetAll = true;
    schedule();
    pumpHistory();
  }
  if (v === 'tasks' && tick % 10 === 0) touch('tasks');
  if (v === 'task' && tick % 5 === 0 && D && D.task && !FINAL.has(D.task.state)) touch('task');
  if (v === 'llm' && tick % 60 === 0) loadLlm();
  // Run events keep these live; a slow refresh covers a stream that fell behind.
  if (v === 'workflow' && W && tick % 10 === 0 && !(W.run && WF.RUN_FINAL.has(W.run.state))) loadRun(W);
  if (v === 'workflows' && tick % 30 === 0) loadRuns();
  if (booted && streamGone && tick % 10 === 0) {
    refreshBase();
    refreshView();
  }
}, 1000);

// --- Boot

/** Takes a token from `#token=XYZ` (what `agentcom-hub dev` prints) and drops it from the URL. */
function tokenFromHash() {
  const h = location.hash || '';
  if (!/^#(.*&)?token=/.test(h)) return false;
  const t = new URLSearchParams(h.slice(1)).get('token');
  history.replaceState(null, '', location.pathname + location.search);
  if (!t) return false;
  setToken(t);
  return true;
}

function init() {
  applyTheme();
  tokenFromHash();
  if (getToken()) start();
  else showLogin('');
}

init();
