// The mesh dashboard: the service graph (GET /api/graph, every 2 s), a panel per edge with its
// recent failures (GET /api/failures), and a tap view (GET /api/tap, one JSON object per line).

import { byId, edgeIdentity, edgeKey, fetchJson, formatTime } from './common.js';
import { drawGraph } from './graph.js';
import { closePanel, refreshPanel, selectEdge } from './panel.js';
import { startTap, stopTap, tapQuery } from './tap.js';

const POLL_MS = 2000;
const WINDOW = '30s';

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

// ---- polling ----

let lastGraph = null;

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
    drawGraph(graph, (identity) => selectEdge(identity, lastGraph));
    setStatus('ok', `${graph.edges.length} edges, ${graph.nodes.length} nodes, last ${seconds} s`
      + ` (at ${at} UTC)`);
    setGraphMessage('');
  }
  refreshPanel(graph);
}

async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

// ---- tabs ----

function showView(view) {
  for (const tab of document.querySelectorAll('[role=tab]')) {
    const selected = tab.dataset.view === view;
    tab.setAttribute('aria-selected', String(selected));
    byId('view-' + tab.dataset.view).hidden = !selected;
  }
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
  byId('edge-panel-close').addEventListener('click', closePanel);
  byId('tap-form').addEventListener('submit', (event) => {
    event.preventDefault();
    startTap(tapQuery(event.target));
  });
  byId('tap-stop').addEventListener('click', stopTap);
  const linkedEdge = followLink();
  refresh().then(() => {
    if (linkedEdge && lastGraph) {
      const edge = lastGraph.edges.find((e) => edgeKey(e) === linkedEdge);
      if (edge) selectEdge(edgeIdentity(edge), lastGraph);
    }
    setTimeout(poll, POLL_MS);
  });
}

init();
