// The fleet view's Services: every service task that has not ended (GET /api/v1/services), with
// its host, ports, health, uptime and restarts, kept live from the event stream's task changes
// (a service task carries `service`, where its sidecar last said it stands), and a Stop button.

import { setHTML, stateBadge, taskLink } from './views.js';
import { DASH, esc, fmtAgo, shortId, truncate } from './util.js';

const ENDED = new Set(['succeeded', 'failed', 'cancelled', 'expired', 'dead_lettered']);

/** Takes a task change into the list; true if the list changed, null if it must be fetched. */
export function serviceChanged(S, task) {
  if (!task || !task.spec || !task.spec.work || !task.spec.work.service) return false;
  const at = S.services.findIndex((s) => s.id === task.id);
  if (ENDED.has(task.state)) {
    if (at < 0) return false;
    S.services.splice(at, 1);
    return true;
  }
  if (at < 0) return null; // a new one: its host comes with the list
  const status = task.service;
  const old = S.services[at];
  S.services[at] = {
    ...old,
    state: status ? status.state : task.state,
    ports: status ? status.ports : old.ports,
    restarts: status ? status.restarts : old.restarts,
    evidence: status ? status.evidence : old.evidence,
    started_unix_ms: status ? status.started_unix_ms : old.started_unix_ms,
    ready_unix_ms: status ? status.ready_unix_ms : old.ready_unix_ms,
  };
  return true;
}

function ports(s) {
  const entries = Object.entries(s.ports || {});
  if (!entries.length) return DASH;
  return entries
    .map(([name, port]) => {
      const text = `${esc(name)} ${esc(port)}`;
      return s.host ? `<a href="http://${esc(s.host)}:${esc(port)}/" rel="noopener" target="_blank">${text}</a>` : text;
    })
    .join(', ');
}

export function renderServices(S) {
  const el = document.getElementById('services');
  if (!el) return;
  if (!S.services.length) {
    setHTML(el, '<p class="muted">No services are running. Start one with <code>hubctl repo up PATH</code>, or a task with <code>service</code> work.</p>');
    return;
  }
  const rows = S.services.map((s) => {
    const health = s.evidence ? `<span class="muted" title="${esc(s.evidence)}">${esc(truncate(s.evidence, 80))}</span>` : '';
    const run = s.run_id ? `<a href="#/workflows/${esc(s.run_id)}" title="${esc(s.run_id)}">${esc(shortId(s.run_id))}</a>` : DASH;
    return (
      `<tr data-service="${esc(s.id)}"><td>${taskLink(s.id, s.name)}</td><td>${stateBadge(s.state)} ${health}</td>` +
      `<td>${esc(s.host || DASH)}</td><td>${ports(s)}</td>` +
      `<td>${s.started_unix_ms ? esc(fmtAgo(s.started_unix_ms)) : DASH}</td><td>${esc(s.restarts || 0)}</td><td>${run}</td>` +
      `<td><button type="button" data-action="cancel" data-id="${esc(s.id)}" aria-label="Stop ${esc(s.name)}">Stop</button></td></tr>`
    );
  });
  setHTML(
    el,
    '<div class="scroll"><table class="services"><thead><tr>' +
      ['Service', 'Health', 'Host', 'Ports', 'Up since', 'Restarts', 'Run', ''].map((h) => `<th scope="col">${h}</th>`).join('') +
      `</tr></thead><tbody>${rows.join('')}</tbody></table></div>`,
  );
}
