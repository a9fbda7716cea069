// The mesh dashboard: the service graph (GET /api/graph, every 2 s), a panel per edge with its
// recent failures (GET /api/failures), and a tap view (GET /api/tap, one JSON object per line).
// Every string from the API goes into the DOM as text (textContent, attributes), never as HTML.
'use strict';

const POLL_MS = 2000;
const WINDOW = '30s';
// A peer that does not answer within this is reported as unreachable, not waited on forever.
const REQUEST_TIMEOUT_MS = 5000;
const TAP_MAX_ROWS = 500;
const SVG_NS = 'http://www.w3.org/2000/svg';

const byId = (id) => document.getElementById(id);

function element(tag, attributes = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgElement(tag, attributes = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---- formatting ----

function formatNumber(v) {
  if (v === 0) return '0';
  if (v < 10) return v.toFixed(2);
  if (v < 100) return v.toFixed(1);
  return Math.round(v).toString();
}

function formatPercent(share) {
  if (share === null || share === undefined) return '–';
  const p = share * 100;
  return (p === 100 || p === 0 ? p.toFixed(0) : p.toFixed(1)) + '%';
}

function formatMs(v) {
  if (v === null || v === undefined) return '–';
  return v < 10 ? v.toFixed(2) + ' ms' : Math.round(v) + ' ms';
}

function formatBytes(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + ' MB/s';
  if (v >= 1e3) return (v / 1e3).toFixed(1) + ' kB/s';
  return formatNumber(v) + ' B/s';
}

function formatTime(unixMs) {
  return new Date(unixMs).toISOString().slice(11, 23);
}

// L7 edges (a waypoint saw the requests) are measured in requests, L4 ones in connections.
function isL7(edge) {
  return edge.protocol !== 'tcp';
}

function edgeRate(edge) {
  return isL7(edge) ? edge.requests_per_second : edge.connections_per_second;
}

function rateText(edge) {
  return formatNumber(edgeRate(edge)) + (isL7(edge) ? ' req/s' : ' conn/s');
}

function health(edge) {
  if (edge.denied > 0) return 'denied';
  if (edge.success_rate === null || edge.success_rate === undefined) return 'idle';
  if (edge.success_rate >= 0.99) return 'ok';
  if (edge.success_rate >= 0.9) return 'warn';
  return 'bad';
}

function edgeKey(edge) {
  return edge.source + '->' + edge.destination;
}

// Two reporters (ztunnel and waypoint) may both report the same pair of nodes.
function edgeIdentity(edge) {
  return edgeKey(edge) + '|' + edge.reporter + '|' + edge.protocol;
}

// ---- status line ----

function setStatus(state, text) {
  const status = byId('status');
  status.dataset.state = state;
  status.textContent = text;
}

function setGraphMessage(text) {
  const message = byId('graph-message');
  message.textContent = text || '';
  message.hidden = !text;
}

// ---- layout: clients left, services middle, workloads right, grouped by namespace ----

const COLUMNS = ['clients', 'services', 'workloads'];
const NODE_W = 190;
const NODE_H = 42;
const NODE_GAP = 14;
const GROUP_HEADER = 24;
const GROUP_GAP = 18;
const TOP = 40;
const WIDTH = 1200;
const COLUMN_X = [30, (WIDTH - NODE_W) / 2, WIDTH - NODE_W - 30];

// Every node seen since the page loaded keeps its column, and its place is computed from all of
// them, so a node whose traffic pauses for a window does not make the others jump.
const seenNodes = new Map();

function columnFor(node, hasIncoming) {
  if (node.kind === 'service') return 1;
  return hasIncoming ? 2 : 0;
}

function layout(graph) {
  const incoming = new Set(graph.edges.map((e) => e.destination));
  for (const node of graph.nodes) {
    const known = seenNodes.get(node.id);
    seenNodes.set(node.id, {
      node,
      column: known ? known.column : columnFor(node, incoming.has(node.id)),
    });
  }
  const positions = new Map();
  const groups = [];
  let height = 0;
  COLUMNS.forEach((_, column) => {
    const members = [...seenNodes.values()]
      .filter((s) => s.column === column)
      .map((s) => s.node)
      .sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name)
        || a.id.localeCompare(b.id));
    let y = TOP;
    let namespace = null;
    let group = null;
    for (const node of members) {
      if (node.namespace !== namespace) {
        if (group) y += GROUP_GAP;
        namespace = node.namespace;
        group = { column, namespace, top: y, bottom: y };
        groups.push(group);
        y += GROUP_HEADER;
      }
      positions.set(node.id, { x: COLUMN_X[column], y, column });
      y += NODE_H + NODE_GAP;
      group.bottom = y - NODE_GAP + 8;
    }
    height = Math.max(height, y);
  });
  return { positions, groups, height: height + 20 };
}

// ---- drawing ----

function nodeSubtitle(node) {
  const parts = [node.kind];
  if (node.version) parts.push(node.version);
  if (!node.meshed && node.kind !== 'service') parts.push('not meshed');
  return parts.join(' · ');
}

function drawNode(svg, node, at) {
  const g = svgElement('g', {
    class: 'node kind-' + node.kind + (node.meshed ? '' : ' unmeshed'),
    'data-testid': 'node',
    'data-node': node.id,
    transform: `translate(${at.x},${at.y})`,
  });
  g.append(svgElement('rect', { width: NODE_W, height: NODE_H, rx: 6 }));
  g.append(svgElement('text', { x: 10, y: 17, class: 'node-name' }, node.name || node.id));
  g.append(svgElement('text', { x: 10, y: 33, class: 'node-detail' }, nodeSubtitle(node)));
  const title = svgElement('title', {}, node.id);
  g.append(title);
  svg.append(g);
}

function drawGroup(svg, group) {
  const x = COLUMN_X[group.column] - 10;
  const g = svgElement('g', { class: 'namespace', 'data-namespace': group.namespace });
  g.append(svgElement('rect', {
    x, y: group.top, width: NODE_W + 20, height: group.bottom - group.top, rx: 8,
  }));
  g.append(svgElement('text', { x: x + 8, y: group.top + 16 }, group.namespace || '(no namespace)'));
  svg.append(g);
}

// A cubic curve between the nodes' facing sides; `offset` separates parallel edges. `at(t)` is
// the curve's point at t in [0, 1].
function edgePath(from, to, offset) {
  const fy = from.y + NODE_H / 2 + offset;
  const ty = to.y + NODE_H / 2 + offset;
  let fx; let tx; let c1; let c2;
  if (from.x < to.x) {
    fx = from.x + NODE_W; tx = to.x;
    const bend = (tx - fx) / 2;
    c1 = [fx + bend, fy]; c2 = [tx - bend, ty];
  } else if (from.x > to.x) {
    fx = from.x; tx = to.x + NODE_W;
    const bend = (fx - tx) / 2;
    c1 = [fx - bend, fy]; c2 = [tx + bend, ty];
  } else {
    // Same column: loop out to the right.
    fx = from.x + NODE_W; tx = to.x + NODE_W;
    c1 = [fx + 90, fy]; c2 = [tx + 90, ty];
  }
  const d = `M${fx},${fy} C${c1[0]},${c1[1]} ${c2[0]},${c2[1]} ${tx},${ty}`;
  const at = (t) => {
    const u = 1 - t;
    const mix = (a, b, c, e) => u * u * u * a + 3 * u * u * t * b + 3 * u * t * t * c + t * t * t * e;
    return [mix(fx, c1[0], c2[0], tx), mix(fy, c1[1], c2[1], ty)];
  };
  // The horizontal room between the nodes, which a label must not leave.
  const span = fx === tx ? [fx + 4, fx + 180] : [Math.min(fx, tx) + 4, Math.max(fx, tx) - 4];
  return { d, at, span };
}

// Labels go where their edges spread apart (near the source when several edges meet at the
// destination, and the other way round), then move down until they overlap no earlier label.
const LABEL_LINE = 14;
const LABEL_CHAR = 7;

function placeLabel(placed, point, span, lines) {
  const width = Math.max(...lines.map((l) => l.length)) * LABEL_CHAR;
  const height = lines.length * LABEL_LINE;
  const center = Math.min(Math.max(point[0], span[0] + width / 2), span[1] - width / 2);
  const box = { x: center - width / 2, y: point[1] - height / 2, width, height };
  const overlaps = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width
    && a.y < b.y + b.height && b.y < a.y + a.height;
  for (let tries = 0; tries < 20 && placed.some((b) => overlaps(box, b)); tries += 1) {
    box.y += LABEL_LINE;
  }
  placed.push(box);
  return [center, box.y + LABEL_LINE - 3];
}

function drawEdge(svg, edge, from, to, offset, labelAt, placed) {
  const state = health(edge);
  const g = svgElement('g', {
    class: 'edge health-' + state + (edge.would_deny > 0 ? ' would-deny' : '')
      + (edge.denied > 0 ? ' denied' : ''),
    'data-testid': 'edge',
    'data-edge': edgeKey(edge),
    'data-source': edge.source,
    'data-destination': edge.destination,
    'data-reporter': edge.reporter,
    'data-protocol': edge.protocol,
    'data-rps': String(edge.requests_per_second),
    'data-cps': String(edge.connections_per_second),
    'data-rate': String(edgeRate(edge)),
    'data-success': edge.success_rate == null ? '' : String(edge.success_rate),
    'data-denied': String(edge.denied),
    'data-would-deny': String(edge.would_deny),
    tabindex: '0',
    role: 'button',
  });
  const { d, at, span } = edgePath(from, to, offset);
  if (edge.would_deny > 0) g.append(svgElement('path', { d, class: 'edge-highlight' }));
  g.append(svgElement('path', { d, class: 'edge-line', 'marker-end': `url(#arrow-${state})` }));
  // A wide invisible stroke: the line itself is too thin to click.
  g.append(svgElement('path', { d, class: 'edge-hit' }));

  const lines = [rateText(edge) + ' · ' + formatPercent(edge.success_rate)];
  const policies = edge.policies.join(', ');
  if (edge.denied > 0) lines.push('denied: ' + (policies || `${edge.denied} flows`));
  if (edge.would_deny > 0) lines.push('would deny: ' + (policies || `${edge.would_deny} flows`));
  const [x, y] = placeLabel(placed, at(labelAt), span, lines);
  const label = svgElement('text', { class: 'edge-label', 'data-testid': 'edge-label', x, y });
  lines.forEach((line, i) => {
    label.append(svgElement('tspan', {
      x, dy: i === 0 ? '0' : String(LABEL_LINE), class: i === 0 ? 'edge-rate' : 'edge-policy',
    }, line));
  });
  g.append(label);
  g.append(svgElement('title', {}, edgeKey(edge) + ' (' + edge.reporter + ')'));
  g.addEventListener('click', () => selectEdge(edgeIdentity(edge)));
  g.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') selectEdge(edgeIdentity(edge));
  });
  svg.append(g);
}

function drawMarkers(svg) {
  const defs = svgElement('defs');
  for (const state of ['ok', 'warn', 'bad', 'denied', 'idle']) {
    const marker = svgElement('marker', {
      id: 'arrow-' + state, viewBox: '0 0 10 10', refX: '9', refY: '5',
      markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse',
      class: 'arrow health-' + state,
    });
    marker.append(svgElement('path', { d: 'M0,0 L10,5 L0,10 z' }));
    defs.append(marker);
  }
  svg.append(defs);
}

function drawGraph(graph) {
  const svg = byId('graph');
  svg.replaceChildren();
  svg.classList.remove('stale');
  const { positions, groups, height } = layout(graph);
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${height}`);
  svg.dataset.generated = String(graph.generated_unix_ms);
  drawMarkers(svg);
  COLUMNS.forEach((name, column) => {
    svg.append(svgElement('text', {
      class: 'column-title', x: COLUMN_X[column] + NODE_W / 2, y: 20,
    }, name));
  });
  const present = new Set(graph.nodes.map((n) => n.id));
  for (const group of groups) {
    const anyPresent = [...seenNodes.values()].some((s) => s.column === group.column
      && s.node.namespace === group.namespace && present.has(s.node.id));
    if (anyPresent) drawGroup(svg, group);
  }
  const parallel = new Map();
  const into = new Map();
  const out = new Map();
  for (const edge of graph.edges) {
    into.set(edge.destination, (into.get(edge.destination) || 0) + 1);
    out.set(edge.source, (out.get(edge.source) || 0) + 1);
  }
  const placed = [];
  for (const edge of graph.edges) {
    const from = positions.get(edge.source);
    const to = positions.get(edge.destination);
    if (!from || !to) continue; // an edge to a node the API did not list: nothing to anchor it
    const pair = edgeKey(edge);
    const index = parallel.get(pair) || 0;
    parallel.set(pair, index + 1);
    const fanIn = into.get(edge.destination);
    const fanOut = out.get(edge.source);
    const labelAt = fanIn > fanOut ? 0.3 : fanOut > fanIn ? 0.7 : 0.5;
    drawEdge(svg, edge, from, to, index * 8, labelAt, placed);
  }
  for (const node of graph.nodes) drawNode(svg, node, positions.get(node.id));
}

// ---- polling ----

let lastGraph = null;
let selectedEdge = null;

async function fetchJson(url) {
  const response = await fetch(url, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!response.ok) {
    const body = (await response.text()).trim();
    throw new Error(`${url} answered ${response.status}${body ? ': ' + body : ''}`);
  }
  return response.json();
}

async function refresh() {
  let graph;
  try {
    graph = await fetchJson('/api/graph?window=' + WINDOW);
  } catch (error) {
    const reason = error.name === 'TimeoutError' ? 'no answer within 5 s' : error.message;
    setStatus('unreachable', `the controller's API is unreachable (${reason}); retrying every 2 s`);
    setGraphMessage(`The controller's API is unreachable: ${reason}`);
    byId('graph').classList.add('stale');
    return;
  }
  lastGraph = graph;
  const seconds = Math.round(graph.window_seconds || 30);
  const at = formatTime(graph.generated_unix_ms);
  if (graph.edges.length === 0) {
    byId('graph').replaceChildren();
    setStatus('empty', `no traffic in the last ${seconds} s (at ${at} UTC)`);
    setGraphMessage(`no traffic in the last ${seconds} s`);
  } else {
    drawGraph(graph);
    setStatus('ok', `${graph.edges.length} edges, ${graph.nodes.length} nodes, last ${seconds} s`
      + ` (at ${at} UTC)`);
    setGraphMessage('');
  }
  if (selectedEdge) showEdge();
}

async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

// ---- the edge panel ----

function selectEdge(identity) {
  selectedEdge = identity;
  byId('edge-panel').hidden = false;
  showEdge();
}

function figure(list, name, value) {
  list.append(element('dt', {}, name));
  list.append(element('dd', { 'data-figure': name }, value));
}

function showEdge() {
  const edge = lastGraph && lastGraph.edges.find((e) => edgeIdentity(e) === selectedEdge);
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
  message.textContent = mine.length ? `${mine.length} recent failures on this edge`
    : 'no recent failures on this edge';
}

// ---- tabs ----

function showView(view) {
  for (const tab of document.querySelectorAll('[role=tab]')) {
    const selected = tab.dataset.view === view;
    tab.setAttribute('aria-selected', String(selected));
    byId('view-' + tab.dataset.view).hidden = !selected;
  }
}

// ---- tap ----

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

function tapQuery(form) {
  const query = new URLSearchParams();
  for (const name of ['namespace', 'workload', 'service']) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  if (form.elements.failed_only.checked) query.set('failed_only', 'true');
  return query;
}

async function startTap(query) {
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

function stopTap() {
  if (!tapController) return;
  const controller = tapController;
  tapController = null;
  controller.abort();
  byId('tap-start').disabled = false;
  byId('tap-stop').disabled = true;
  tapStatus('stopped', 'stopped');
}

// ---- start ----

// Deep links: `#tap?namespace=demo&failed_only=true` opens the tap view and starts it with those
// filters; `#edge=<source>-><destination>` opens that edge's panel once the graph has it.
function followLink() {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash === 'tap' || hash.startsWith('tap?')) {
    showView('tap');
    const query = new URLSearchParams(hash.slice(4));
    const form = byId('tap-form');
    for (const name of ['namespace', 'workload', 'service']) {
      form.elements[name].value = query.get(name) || '';
    }
    form.elements.failed_only.checked = query.get('failed_only') === 'true';
    if (hash.startsWith('tap?')) startTap(tapQuery(form));
    return null;
  }
  return hash.startsWith('edge=') ? hash.slice('edge='.length) : null;
}

function init() {
  for (const tab of document.querySelectorAll('[role=tab]')) {
    tab.addEventListener('click', () => showView(tab.dataset.view));
  }
  byId('edge-panel-close').addEventListener('click', () => {
    selectedEdge = null;
    byId('edge-panel').hidden = true;
    for (const g of document.querySelectorAll('.edge.selected')) g.classList.remove('selected');
  });
  byId('tap-form').addEventListener('submit', (event) => {
    event.preventDefault();
    startTap(tapQuery(event.target));
  });
  byId('tap-stop').addEventListener('click', stopTap);
  const linkedEdge = followLink();
  refresh().then(() => {
    if (linkedEdge && lastGraph) {
      const edge = lastGraph.edges.find((e) => edgeKey(e) === linkedEdge);
      if (edge) selectEdge(edgeIdentity(edge));
    }
    setTimeout(poll, POLL_MS);
  });
}

init();
