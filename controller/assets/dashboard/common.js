// What the dashboard's modules share: DOM helpers, formatting, what an edge is, and fetching
// JSON from the observation API. Every string from the API goes into the DOM as text
// (textContent, attributes), never as HTML.

// A peer that does not answer within this is reported as unreachable, not waited on forever.
export const REQUEST_TIMEOUT_MS = 5000;
const SVG_NS = 'http://www.w3.org/2000/svg';

export const byId = (id) => document.getElementById(id);

export function element(tag, attributes = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

export function svgElement(tag, attributes = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

export function formatNumber(v) {
  if (v === 0) return '0';
  if (v < 10) return v.toFixed(2);
  if (v < 100) return v.toFixed(1);
  return Math.round(v).toString();
}

export function formatPercent(share) {
  if (share === null || share === undefined) return '–';
  const p = share * 100;
  return (p === 100 || p === 0 ? p.toFixed(0) : p.toFixed(1)) + '%';
}

export function formatMs(v) {
  if (v === null || v === undefined) return '–';
  return v < 10 ? v.toFixed(2) + ' ms' : Math.round(v) + ' ms';
}

export function formatBytes(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + ' MB/s';
  if (v >= 1e3) return (v / 1e3).toFixed(1) + ' kB/s';
  return formatNumber(v) + ' B/s';
}

export function formatTime(unixMs) {
  return new Date(unixMs).toISOString().slice(11, 23);
}

// L7 edges (a waypoint saw the requests) are measured in requests, L4 ones in connections.
export function isL7(edge) {
  return edge.protocol !== 'tcp';
}

export function edgeRate(edge) {
  return isL7(edge) ? edge.requests_per_second : edge.connections_per_second;
}

export function rateText(edge) {
  return formatNumber(edgeRate(edge)) + (isL7(edge) ? ' req/s' : ' conn/s');
}

export function health(edge) {
  if (edge.denied > 0) return 'denied';
  if (edge.success_rate === null || edge.success_rate === undefined) return 'idle';
  if (edge.success_rate >= 0.99) return 'ok';
  if (edge.success_rate >= 0.9) return 'warn';
  return 'bad';
}

export function edgeKey(edge) {
  return edge.source + '->' + edge.destination;
}

// Two reporters (ztunnel and waypoint) may both report the same pair of nodes.
export function edgeIdentity(edge) {
  return edgeKey(edge) + '|' + edge.reporter + '|' + edge.protocol;
}

export async function fetchJson(url) {
  const response = await fetch(url, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!response.ok) {
    const body = (await response.text()).trim();
    throw new Error(`${url} answered ${response.status}${body ? ': ' + body : ''}`);
  }
  return response.json();
}
