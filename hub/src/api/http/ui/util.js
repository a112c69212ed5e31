// Small pure helpers: escaping and formatting. Everything from the API is untrusted text.

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes any value for use in HTML text or a quoted attribute. */
export function esc(value) {
  if (value === null || value === undefined) return '';
  return String(value).replace(/[&<>"']/g, (c) => ESC[c]);
}

export const DASH = '\u2014';

export function isNum(n) {
  return typeof n === 'number' && Number.isFinite(n);
}

export function fmtBytes(n) {
  if (!isNum(n)) return DASH;
  const abs = Math.abs(n);
  if (abs >= 1024 ** 4) return (n / 1024 ** 4).toFixed(2) + ' TiB';
  if (abs >= 1024 ** 3) return (n / 1024 ** 3).toFixed(abs >= 100 * 1024 ** 3 ? 0 : 1) + ' GiB';
  if (abs >= 1024 ** 2) return (n / 1024 ** 2).toFixed(abs >= 100 * 1024 ** 2 ? 0 : 1) + ' MiB';
  if (abs >= 1024) return (n / 1024).toFixed(1) + ' KiB';
  return Math.round(n) + ' B';
}

/** "used / total GiB" with the unit once. */
export function fmtUsed(used, total) {
  if (!isNum(total) || total <= 0) return fmtBytes(used);
  if (!isNum(used)) return DASH + ' / ' + fmtBytes(total);
  const g = 1024 ** 3;
  if (total >= g) return (used / g).toFixed(1) + ' / ' + (total / g).toFixed(total >= 100 * g ? 0 : 1) + ' GiB';
  return fmtBytes(used) + ' / ' + fmtBytes(total);
}

export function fmtDur(ms) {
  if (!isNum(ms)) return DASH;
  if (ms < 0) ms = 0;
  if (ms < 1000) return Math.round(ms) + ' ms';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm ' + Math.floor(s % 60) + 's';
  const h = Math.floor(m / 60);
  if (h < 48) return h + 'h ' + (m % 60) + 'm';
  return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
}

export function fmtAgo(unixMs, now = Date.now()) {
  if (!isNum(unixMs)) return DASH;
  const d = now - unixMs;
  if (Math.abs(d) < 1500) return 'now';
  return d > 0 ? fmtDur(d) + ' ago' : 'in ' + fmtDur(-d);
}

const pad = (n) => String(n).padStart(2, '0');

export function fmtTime(unixMs) {
  if (!isNum(unixMs)) return DASH;
  const d = new Date(unixMs);
  return (
    d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
    pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds())
  );
}

export function fmtClock(unixMs) {
  const d = new Date(unixMs);
  return pad(d.getHours()) + ':' + pad(d.getMinutes());
}

export function fmtPct(n, digits = 0) {
  return isNum(n) ? n.toFixed(digits) + '%' : DASH;
}

export function fmtNum(n, digits = 0) {
  if (!isNum(n)) return DASH;
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtCost(micros) {
  if (!isNum(micros)) return DASH;
  const d = micros / 1e6;
  if (d === 0) return '$0';
  if (d < 0.01) return '$' + d.toFixed(4);
  return '$' + d.toFixed(2);
}

export const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'expired', 'dead_lettered']);
export const AGENT_STATES = ['idle', 'assigned', 'working', 'blocked', 'draining', 'offline'];
export const LANES = ['interactive', 'urgent', 'high', 'normal', 'low'];

export function taskKind(task) {
  const w = task && task.spec && task.spec.work;
  if (!w || typeof w !== 'object') return 'task';
  if (w.shell) return 'shell';
  if (w.llm) return 'llm';
  if (w.agent) return 'agent';
  return Object.keys(w)[0] || 'task';
}

/** A one-line description of what the task runs: argv, script, prompt or goal. */
export function commandOf(task) {
  const w = task && task.spec && task.spec.work;
  if (!w || typeof w !== 'object') return '';
  if (w.shell && w.shell.command) {
    const c = w.shell.command;
    if (Array.isArray(c.argv)) return c.argv.join(' ');
    if (typeof c.script === 'string') return c.script;
  }
  if (w.llm) {
    const l = w.llm;
    if (typeof l.prompt === 'string' && l.prompt) return l.prompt;
    if (Array.isArray(l.messages) && l.messages.length) return String(l.messages[l.messages.length - 1].content || '');
  }
  if (w.agent) return String(w.agent.goal || '');
  return '';
}

export function taskName(task) {
  return (task && task.spec && task.spec.name) || '';
}

/** Runs `fn` on the next animation frame, or after 250 ms if frames are paused. */
export function nextFrame(fn) {
  let done = false;
  const run = () => {
    if (done) return;
    done = true;
    fn();
  };
  requestAnimationFrame(run);
  setTimeout(run, 250);
}

export function truncate(s, n) {
  s = String(s == null ? '' : s);
  return s.length > n ? s.slice(0, n - 1) + '\u2026' : s;
}

export function shortId(id) {
  id = String(id || '');
  return id.length > 12 ? '\u2026' + id.slice(-8) : id;
}
