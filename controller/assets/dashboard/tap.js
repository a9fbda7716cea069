// The tap view: GET /api/tap streamed (fetch + ReadableStream, one JSON object per line) into a
// table, newest first, until the user stops it or the controller ends it.

import { REQUEST_TIMEOUT_MS, byId, element, formatMs, formatTime } from './common.js';

const TAP_MAX_ROWS = 500;

let tapController = null;

function tapStatus(state, text) {
  const status = byId('tap-status');
  status.dataset.state = state;
  status.textContent = text;
}

function tapRow(r) {
  const row = element('tr', { 'data-testid': 'tap-row', class: r.failed ? 'failed' : '' });
  const party = (p) => (p.workload ? `${p.namespace}/${p.workload}` : p.identity || p.address);
  const destination = r.destination_service || party(r.destination);
  const request = r.method ? `${r.method} ${r.authority}${r.path}` : `:${r.destination_port}`;
  const status = r.grpc_status !== null && r.grpc_status !== undefined
    ? `${r.status} grpc ${r.grpc_status}` : String(r.status || (r.failed ? 'failed' : 'ok'));
  const policy = r.policy ? r.policy + (r.would_deny ? ' (would deny)' : '') : '';
  const cells = {
    time: formatTime(r.start_unix_ms), reporter: r.reporter_kind, source: party(r.source),
    destination, protocol: r.protocol, request, status,
    flags: r.response_flags || r.reason, latency: formatMs(r.duration_ms),
    mtls: r.mutual_tls ? 'yes' : 'no', policy,
  };
  for (const [name, text] of Object.entries(cells)) row.append(element('td', { 'data-cell': name }, text));
  return row;
}

function addTapRecord(line) {
  let record;
  try {
    record = JSON.parse(line);
  } catch (error) {
    tapStatus('error', 'the tap stream sent a line that is not JSON: ' + line.slice(0, 200));
    return;
  }
  const rows = byId('tap-rows');
  rows.prepend(tapRow(record));
  while (rows.rows.length > TAP_MAX_ROWS) rows.deleteRow(rows.rows.length - 1);
}

export function tapQuery(form) {
  const query = new URLSearchParams();
  for (const name of ['namespace', 'workload', 'service']) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  if (form.elements.failed_only.checked) query.set('failed_only', 'true');
  return query;
}

export async function startTap(query) {
  stopTap();
  const controller = new AbortController();
  tapController = controller;
  byId('tap-start').disabled = true;
  byId('tap-stop').disabled = false;
  byId('tap-rows').replaceChildren();
  const url = '/api/tap' + (query.toString() ? '?' + query : '');
  tapStatus('starting', 'connecting to ' + url);
  // The stream is open-ended, but its answer must start within the timeout.
  const answerTimeout = setTimeout(() => controller.abort(new Error('no answer within 5 s')),
    REQUEST_TIMEOUT_MS);
  let seen = 0;
  try {
    const response = await fetch(url, { signal: controller.signal });
    clearTimeout(answerTimeout);
    if (!response.ok) {
      const body = (await response.text()).trim();
      throw new Error(`${url} answered ${response.status}${body ? ': ' + body : ''}`);
    }
    tapStatus('streaming', 'tapping ' + url);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) {
        if (line.trim()) { addTapRecord(line); seen += 1; }
      }
      tapStatus('streaming', `tapping ${url}: ${seen} flows`);
    }
    if (buffered.trim()) { addTapRecord(buffered); seen += 1; }
    tapStatus('ended', `the controller ended the tap after ${seen} flows`);
  } catch (error) {
    clearTimeout(answerTimeout);
    if (tapController !== controller) return; // stopped, or replaced by a newer tap
    const reason = controller.signal.aborted && controller.signal.reason instanceof Error
      ? controller.signal.reason.message : error.message;
    tapStatus('error', 'tap failed: ' + reason);
  } finally {
    if (tapController === controller) {
      tapController = null;
      byId('tap-start').disabled = false;
      byId('tap-stop').disabled = true;
    }
  }
}

export function stopTap() {
  if (!tapController) return;
  const controller = tapController;
  tapController = null;
  controller.abort();
  byId('tap-start').disabled = false;
  byId('tap-stop').disabled = true;
  tapStatus('stopped', 'stopped');
}
