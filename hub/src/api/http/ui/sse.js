// Server-sent events over fetch (EventSource cannot send an Authorization header).
// One reader for the fleet stream and the task streams: the parser follows the SSE spec
// (event/data fields, multi-line data, comments, CR, LF or CRLF, chunks split anywhere),
// and openStream reconnects with backoff from 1 s to 15 s.

import { authHeaders, notifyUnauthorized } from './api.js';

const NEWLINE = /[\r\n]/g;

export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = '';
    this.event = '';
    this.data = [];
    this.skipLF = false;
  }

  push(chunk) {
    if (!chunk) return;
    if (this.skipLF) {
      this.skipLF = false;
      if (chunk.charCodeAt(0) === 10) chunk = chunk.slice(1);
    }
    const s = this.buf + chunk;
    let start = 0;
    NEWLINE.lastIndex = 0;
    let m;
    while ((m = NEWLINE.exec(s)) !== null) {
      const k = m.index;
      this.line(s.slice(start, k));
      if (s.charCodeAt(k) === 13) {
        if (k + 1 < s.length) {
          if (s.charCodeAt(k + 1) === 10) NEWLINE.lastIndex = k + 2;
        } else {
          this.skipLF = true;
        }
      }
      start = NEWLINE.lastIndex;
    }
    this.buf = s.slice(start);
  }

  line(l) {
    if (l === '') {
      if (this.data.length) {
        const ev = this.event || 'message';
        const data = this.data.join('\n');
        this.event = '';
        this.data = [];
        this.onEvent(ev, data);
      } else {
        this.event = '';
      }
      return;
    }
    if (l.charCodeAt(0) === 58) return; // ':' comment (keep-alive)
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    // id and retry are not used: every reconnect starts with a fresh snapshot.
  }
}

/**
 * Opens an SSE stream and keeps it open.
 * handlers: onEvent(name, parsedJsonOrNull), onStatus('connecting'|'live'|'offline', info),
 * onOpen(), shouldReconnect() -> bool (called when a stream ends), onHttpError(status) -> bool
 * (false stops reconnecting). Answers { close() }.
 */
export function openStream(path, handlers) {
  let closed = false;
  let ctl = null;
  let timer = null;
  let delay = 1000;
  let failures = 0;
  const status = (s, info) => {
    if (!closed && handlers.onStatus) handlers.onStatus(s, info);
  };

  async function connect() {
    timer = null;
    if (closed) return;
    ctl = new AbortController();
    status('connecting', { failures });
    let opened = false;
    try {
      const res = await fetch(path, {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        cache: 'no-store',
        signal: ctl.signal,
      });
      if (res.status === 401) {
        closed = true;
        if (handlers.onStatus) handlers.onStatus('offline', { unauthorized: true });
        notifyUnauthorized();
        return;
      }
      if (!res.ok || !res.body) {
        try {
          await res.text();
        } catch {
          /* ignore */
        }
        if (handlers.onHttpError && handlers.onHttpError(res.status) === false) {
          closed = true;
          if (handlers.onStatus) handlers.onStatus('offline', { status: res.status });
          return;
        }
        throw new Error('status ' + res.status);
      }
      opened = true;
      failures = 0;
      delay = 1000;
      status('live');
      if (handlers.onOpen) handlers.onOpen();
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SSEParser((name, data) => {
        if (closed) return;
        let value = null;
        try {
          value = JSON.parse(data);
        } catch {
          value = null;
        }
        try {
          handlers.onEvent(name, value);
        } catch {
          /* a bad event must not end the stream */
        }
      });
      for (;;) {
        const { value, done } = await reader.read();
        if (done || closed) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
      parser.push(decoder.decode());
    } catch {
      /* network error or abort: handled below */
    }
    if (closed) return;
    if (opened && handlers.shouldReconnect && !handlers.shouldReconnect()) {
      closed = true;
      if (handlers.onStatus) handlers.onStatus('offline', { ended: true });
      return;
    }
    if (!opened) failures++;
    const wait = Math.round(delay * (0.75 + Math.random() * 0.5));
    delay = Math.min(delay * 2, 15000);
    status(failures >= 2 ? 'offline' : 'connecting', { failures, retryMs: wait });
    timer = setTimeout(connect, wait);
  }

  connect();
  return {
    close() {
      closed = true;
      if (timer) clearTimeout(timer);
      if (ctl) ctl.abort();
    },
  };
}
