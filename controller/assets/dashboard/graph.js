// The service graph as SVG: clients left, services middle, workloads right, grouped by
// namespace; edges labelled with their rate and success, coloured by success, denials and
// would-denies marked.

import {
  byId, edgeIdentity, edgeKey, edgeRate, formatPercent, health, rateText, svgElement,
} from './common.js';

const COLUMNS = ['clients', 'services', 'workloads'];
const NODE_W = 190;
const NODE_H = 42;
const NODE_GAP = 14;
const GROUP_HEADER = 24;
const GROUP_GAP = 18;
const TOP = 40;
const WIDTH = 1260;
// Room right of the last column for the loops of edges between its nodes, and their labels.
const LOOP = 160;
const COLUMN_X = [30, (WIDTH - LOOP - NODE_W) / 2, WIDTH - LOOP - NODE_W];

// Every node seen since the page loaded keeps its column, and its place is computed from all of
// them, so a node whose traffic pauses for a window does not make the others jump.
const seenNodes = new Map();

function columnFor(node, hasIncoming) {
  if (node.kind === 'service') return 1;
  return hasIncoming ? 2 : 0;
}

// The graph's nodes, and a node for any edge end the API did not list (named by its id, whose
// prefix is its kind), so that every edge is drawn.
function allNodes(graph) {
  const nodes = [...graph.nodes];
  const listed = new Set(nodes.map((n) => n.id));
  for (const id of graph.edges.flatMap((e) => [e.source, e.destination])) {
    if (listed.has(id)) continue;
    listed.add(id);
    const [prefix, ...rest] = id.split(':');
    const kind = ['workload', 'service'].includes(prefix) ? prefix : 'unknown';
    const name = rest.length ? rest.join(':') : id;
    nodes.push({ id, kind, namespace: '', name, app: '', version: '', meshed: false });
  }
  return nodes;
}

function layout(graph, nodes) {
  const incoming = new Set(graph.edges.map((e) => e.destination));
  for (const node of nodes) {
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

function nodeSubtitle(node) {
  const parts = [node.kind];
  if (node.version) parts.push(node.version);
  if (!node.meshed && node.kind !== 'service') parts.push('not meshed');
  return parts.join(' · ');
}

// What fits in a node's box. Long names (identities, hosts) keep their end, the part that tells
// them apart (`…/ns/demo/sa/waypoint`); the whole id is the node's tooltip.
const NAME_CHARS = 22;

function fitted(name) {
  return name.length <= NAME_CHARS ? name : '…' + name.slice(-(NAME_CHARS - 1));
}

function drawNode(svg, node, at) {
  const g = svgElement('g', {
    class: 'node kind-' + node.kind + (node.meshed ? '' : ' unmeshed'),
    'data-testid': 'node',
    'data-node': node.id,
    transform: `translate(${at.x},${at.y})`,
  });
  g.append(svgElement('rect', { width: NODE_W, height: NODE_H, rx: 6 }));
  g.append(svgElement('text', { x: 10, y: 17, class: 'node-name' }, fitted(node.name || node.id)));
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
    c1 = [fx + LOOP / 2, fy]; c2 = [tx + LOOP / 2, ty];
  }
  const d = `M${fx},${fy} C${c1[0]},${c1[1]} ${c2[0]},${c2[1]} ${tx},${ty}`;
  const at = (t) => {
    const u = 1 - t;
    const mix = (a, b, c, e) => u * u * u * a + 3 * u * u * t * b + 3 * u * t * t * c + t * t * t * e;
    return [mix(fx, c1[0], c2[0], tx), mix(fy, c1[1], c2[1], ty)];
  };
  // The horizontal room between the nodes, which a label must not leave.
  const span = fx === tx ? [fx + 4, fx + LOOP - 4] : [Math.min(fx, tx) + 4, Math.max(fx, tx) - 4];
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

function drawEdge(svg, edge, from, to, offset, labelAt, placed, onSelect) {
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
  g.addEventListener('click', () => onSelect(edgeIdentity(edge)));
  g.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') onSelect(edgeIdentity(edge));
  });
  svg.append(g);
}

function drawMarkers(svg) {
  const defs = svgElement('defs');
  for (const state of ['ok', 'warn', 'bad', 'denied', 'idle']) {
    const marker = svgElement('marker', {
      id: 'arrow-' + state, viewBox: '0 0 10 10', refX: '9', refY: '5',
      // The same size on a selected (thicker) edge.
      markerUnits: 'userSpaceOnUse', markerWidth: '12', markerHeight: '12',
      orient: 'auto-start-reverse',
      class: 'arrow health-' + state,
    });
    marker.append(svgElement('path', { d: 'M0,0 L10,5 L0,10 z' }));
    defs.append(marker);
  }
  svg.append(defs);
}

// Draws `graph`; `onSelect(edgeIdentity)` is called when an edge is clicked.
export function drawGraph(graph, onSelect) {
  const svg = byId('graph');
  svg.replaceChildren();
  svg.classList.remove('stale');
  const nodes = allNodes(graph);
  const { positions, groups, height } = layout(graph, nodes);
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${height}`);
  svg.dataset.generated = String(graph.generated_unix_ms);
  drawMarkers(svg);
  COLUMNS.forEach((name, column) => {
    svg.append(svgElement('text', {
      class: 'column-title', x: COLUMN_X[column] + NODE_W / 2, y: 20,
    }, name));
  });
  const present = new Set(nodes.map((n) => n.id));
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
    const pair = edgeKey(edge);
    const index = parallel.get(pair) || 0;
    parallel.set(pair, index + 1);
    const fanIn = into.get(edge.destination);
    const fanOut = out.get(edge.source);
    const labelAt = fanIn > fanOut ? 0.3 : fanOut > fanIn ? 0.7 : 0.5;
    drawEdge(svg, edge, from, to, index * 8, labelAt, placed, onSelect);
  }
  for (const node of nodes) drawNode(svg, node, positions.get(node.id));
}
