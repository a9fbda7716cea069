// The panel of one edge: its figures, refreshed with the graph, and its recent failures
// (GET /api/failures of the source workload, filtered to the edge).

import {
  byId, edgeIdentity, edgeKey, element, fetchJson, formatBytes, formatMs, formatNumber,
  formatPercent, formatTime, isL7,
} from './common.js';

let selectedEdge = null;

// Opens the panel of the edge `identity` (see `edgeIdentity`) of `graph`.
export function selectEdge(identity, graph) {
  selectedEdge = identity;
  byId('edge-panel').hidden = false;
  showEdge(graph);
}

// Shows the selected edge as `graph` has it now, if an edge is selected.
export function refreshPanel(graph) {
  if (selectedEdge) showEdge(graph);
}

export function closePanel() {
  selectedEdge = null;
  byId('edge-panel').hidden = true;
  for (const g of document.querySelectorAll('.edge.selected')) g.classList.remove('selected');
}

function figure(list, name, value) {
  list.append(element('dt', {}, name));
  list.append(element('dd', { 'data-figure': name }, value));
}

function showEdge(graph) {
  const edge = graph && graph.edges.find((e) => edgeIdentity(e) === selectedEdge);
  const title = byId('edge-title');
  const figures = byId('edge-figures');
  figures.replaceChildren();
  for (const g of document.querySelectorAll('.edge.selected')) g.classList.remove('selected');
  if (!edge) {
    title.textContent = selectedEdge.split('|')[0];
    figures.append(element('dd', {}, 'no traffic on this edge in the last window'));
    return;
  }
  for (const g of document.querySelectorAll('.edge')) {
    if (g.dataset.edge === edgeKey(edge) && g.dataset.reporter === edge.reporter
      && g.dataset.protocol === edge.protocol) g.classList.add('selected');
  }
  title.textContent = edge.source + ' → ' + edge.destination;
  figure(figures, 'protocol', edge.protocol);
  figure(figures, 'reporter', edge.reporter);
  figure(figures, 'requests/s', isL7(edge) ? formatNumber(edge.requests_per_second) : '– (L4)');
  figure(figures, 'success', formatPercent(edge.success_rate));
  figure(figures, 'p50', formatMs(edge.p50_ms));
  figure(figures, 'p99', formatMs(edge.p99_ms));
  figure(figures, 'connections/s', formatNumber(edge.connections_per_second));
  figure(figures, 'bytes/s', formatBytes(edge.bytes_per_second));
  figure(figures, 'mTLS', edge.mutual_tls ? 'yes' : 'no');
  figure(figures, 'denied', String(edge.denied));
  figure(figures, 'would deny', String(edge.would_deny));
  figure(figures, 'policies', edge.policies.length ? edge.policies.join(', ') : 'none');
  showFailures(edge);
}

// Whether a failed flow is one of this edge's: same source workload, same destination node.
function onEdge(record, edge) {
  const [kind, ...rest] = edge.destination.split(':');
  const destination = rest.join(':');
  if (kind === 'workload') {
    return `${record.destination.namespace}/${record.destination.workload}` === destination;
  }
  if (kind === 'service') return record.destination_service === destination;
  return record.destination.address === destination || record.destination.identity === destination;
}

let failuresRequest = 0;

async function showFailures(edge) {
  const message = byId('edge-failures-message');
  const rows = byId('edge-failures').tBodies[0];
  if (!edge.source.startsWith('workload:')) {
    rows.replaceChildren();
    message.textContent = `failures are kept per mesh workload; ${edge.source} is not one`;
    return;
  }
  const workload = edge.source.slice('workload:'.length);
  const request = ++failuresRequest;
  let records;
  try {
    records = await fetchJson('/api/failures?workload=' + encodeURIComponent(workload));
  } catch (error) {
    if (request === failuresRequest) message.textContent = 'could not load failures: ' + error.message;
    return;
  }
  if (request !== failuresRequest) return; // a newer selection or refresh superseded this one
  const mine = records.filter((r) => onEdge(r, edge));
  rows.replaceChildren(...mine.map((r) => {
    const row = element('tr', { 'data-testid': 'failure-row' });
    for (const cell of [formatTime(r.start_unix_ms), String(r.status), r.response_flags, r.reason,
      r.policy + (r.would_deny ? ' (would deny)' : ''), `${r.method} ${r.path}`.trim()]) {
      row.append(element('td', {}, cell));
    }
    return row;
  }));
  message.textContent = mine.length === 0 ? 'no recent failures on this edge'
    : `${mine.length} recent ${mine.length === 1 ? 'failure' : 'failures'} on this edge`;
}
