// bpmon's web view: the jobs, a job's graph coloured by level with its bottleneck and cause,
// each vertex's subtasks, a timeline with the episodes, and the bottleneck's flame graph. It
// reads the collector's query API (/api/v1/…) and refreshes itself; it builds every element
// as a node (never parses markup from text), so data cannot inject anything.
'use strict';

const REFRESH_MS = 5000; // status and jobs
const SLOW_REFRESH_MS = 15000; // timeline and flame graph
const RANGES = [
  ['15m', 15 * 60e3], ['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 24 * 3600e3], ['7d', 7 * 24 * 3600e3],
];
const LEVEL = {
  ok: { word: 'OK', shape: '●', rank: 1 },
  low: { word: 'LOW', shape: '◆', rank: 2 },
  high: { word: 'HIGH', shape: '▲', rank: 3 },
  none: { word: 'no data', shape: '○', rank: 0 },
};
const CAUSE = {
  cpu: 'CPU in its own code', gc: 'garbage collection', lock: 'lock contention', io: 'blocking I/O',
  sleep: 'sleeping or waiting', skew_data: 'data skew', skew_resources: 'skewed resources',
  host: 'a starved host or cgroup', network: 'the network', unknown: 'cause unknown',
};

const state = {
  token: sessionStorage.getItem('bpmon.token') || '',
  route: null,
  timers: [],
  sort: { key: 'level', dir: -1 },
  filter: '',
  lastOk: 0,
  failing: null,
  job: null, // the shown job's view state
};

// ---------------------------------------------------------------------------------------------
// DOM helpers

const SVG_NS = 'http://www.w3.org/2000/svg';

function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function $(id) { return document.getElementById(id); }

// ---------------------------------------------------------------------------------------------
// Formatting

function levelKey(l) { return l && LEVEL[l] ? l : 'none'; }

function ratioText(r) { return r === null || r === undefined ? '' : r.toFixed(2); }

function badge(level, ratio) {
  const k = levelKey(level);
  const r = ratioText(ratio);
  return el('span', { class: 'lvl lvl-' + k, title: 'back-pressure ' + LEVEL[k].word + (r ? ', ratio ' + r : '') },
    LEVEL[k].shape + ' ' + LEVEL[k].word + (r && k !== 'none' ? ' ' + r : ''));
}

function pct(x) { return x === null || x === undefined ? '' : Math.round(x * 100) + '%'; }

function clock(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
}

function dateTime(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' + clock(ms);
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return s + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  if (s < 129600) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' d';
}

function causeText(c) {
  if (!c) return '';
  return (CAUSE[c.kind] || c.kind) + (c.share !== null && c.share !== undefined ? ' (' + pct(c.share) + ')' : '');
}

// ---------------------------------------------------------------------------------------------
// The API

class AuthNeeded extends Error {}

async function api(path, asText) {
  const headers = state.token ? { Authorization: 'Bearer ' + state.token } : {};
  let r;
  try {
    r = await fetch(path, { headers, cache: 'no-store' });
  } catch (e) {
    throw new Error('the collector does not answer (' + e.message + ')');
  }
  if (r.status === 401) throw new AuthNeeded(state.token ? 'that token was refused' : '');
  let body;
  try { body = asText ? await r.text() : await r.json(); } catch (e) { body = null; }
  // A valid token of a role that may not read (an agent's): ask for another, saying why.
  if (r.status === 403) throw new AuthNeeded('that token may not read: ' + (body && body.error ? body.error : '403 Forbidden'));
  if (!r.ok) {
    const msg = body && body.error ? body.error : r.status + ' ' + r.statusText;
    throw new Error(msg);
  }
  return body;
}

function showLogin(message) {
  $('login').hidden = false;
  $('main').replaceChildren();
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('token').focus();
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  state.token = $('token').value.trim();
  sessionStorage.setItem('bpmon.token', state.token);
  $('login').hidden = true;
  route();
});

// Forgets the tab's token (a shared screen, another role): the next read asks again.
$('forget').addEventListener('click', () => {
  state.token = '';
  sessionStorage.removeItem('bpmon.token');
  $('token').value = '';
  route();
});

function markLive(ok, error) {
  const live = $('live');
  if (ok) {
    state.lastOk = Date.now();
    state.failing = null;
  } else {
    state.failing = error;
  }
  live.classList.toggle('failing', !ok);
  live.textContent = ok ? 'live · updated ' + clock(state.lastOk)
    : 'not updating: ' + error + (state.lastOk ? ' (shown: ' + clock(state.lastOk) + ')' : '');
}

// Runs `load` now and every `every` ms while this page is shown; errors show in the header.
function every(ms, load) {
  const run = async () => {
    try {
      await load();
      markLive(true);
    } catch (e) {
      if (e instanceof AuthNeeded) { stopTimers(); showLogin(e.message); return; }
      markLive(false, e.message);
    }
  };
  state.timers.push(setInterval(run, ms));
  return run();
}

function stopTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

// ---------------------------------------------------------------------------------------------
// Routing: #/ (jobs), #/job/<id>[?vertex=<id>&range=<key>]

function parseRoute() {
  const h = location.hash.replace(/^#/, '') || '/';
  const [path, query] = h.split('?');
  const params = new URLSearchParams(query || '');
  const m = path.match(/^\/job\/([^/]+)$/);
  if (m) return { page: 'job', job: decodeURIComponent(m[1]), vertex: params.get('vertex'), range: params.get('range') || '15m' };
  return { page: 'jobs' };
}

function jobHash(job, vertex, range) {
  const q = new URLSearchParams();
  if (vertex) q.set('vertex', vertex);
  if (range && range !== '15m') q.set('range', range);
  const s = q.toString();
  return '#/job/' + encodeURIComponent(job) + (s ? '?' + s : '');
}

function route() {
  stopTimers();
  $('banner').hidden = true;
  $('forget').hidden = !state.token;
  const r = parseRoute();
  const sameJob = state.route && state.route.page === 'job' && r.page === 'job' && state.route.job === r.job;
  state.route = r;
  if (r.page === 'job') {
    if (!sameJob) state.job = null;
    showJob(r);
  } else {
    showJobs();
  }
}

window.addEventListener('hashchange', route);

// ---------------------------------------------------------------------------------------------
// The jobs page

// Worse level first, then higher ratio: how the jobs page and its cards rank jobs.
function severity(j) { return LEVEL[levelKey(j.level)].rank * 10 + (j.ratio || 0); }

const JOB_COLUMNS = [
  ['level', 'Level', severity],
  ['job_name', 'Job', (j) => j.job_name.toLowerCase()],
  ['bottleneck', 'Bottleneck', (j) => (j.bottleneck || '').toLowerCase()],
  ['cause', 'Cause', (j) => j.cause || ''],
  ['since', 'Since', (j) => j.level_since_ms || 0],
  ['updated', 'Updated', (j) => j.updated_at_ms || 0],
  ['state', 'State', (j) => j.state || ''],
];

function showJobs() {
  $('crumbs').replaceChildren(el('span', { text: 'Jobs' }));
  const main = $('main');
  const filter = el('input', {
    type: 'search', placeholder: 'filter by job, vertex, cause or cluster', value: state.filter, 'aria-label': 'filter jobs',
    oninput: (e) => { state.filter = e.target.value; render(); },
  });
  const summary = el('span', { class: 'muted' });
  const table = el('table', { id: 'jobs' });
  const trouble = el('div', { id: 'trouble', class: 'trouble-cards' });
  main.replaceChildren(el('h1', { text: 'Jobs' }), trouble, el('div', { class: 'toolbar' }, filter, summary), table);
  let jobs = [];
  function render() {
    const clusters = severalClusters(jobs);
    troubleCards(trouble, jobs, clusters);
    const f = state.filter.toLowerCase();
    const shown = jobs.filter((j) => !f || [j.job_name, j.job_id, j.bottleneck, j.cause, j.cause_summary, j.state, j.flink_url]
      .some((x) => x && String(x).toLowerCase().includes(f)));
    const col = JOB_COLUMNS.find((c) => c[0] === state.sort.key) || JOB_COLUMNS[0];
    shown.sort((a, b) => {
      const x = col[2](a); const y = col[2](b);
      return (x < y ? -1 : x > y ? 1 : 0) * state.sort.dir || a.job_name.localeCompare(b.job_name);
    });
    const pressed = jobs.filter(backPressured).length;
    summary.textContent = jobs.length + ' job' + (jobs.length === 1 ? '' : 's') + ', ' + pressed + ' back-pressured'
      + (shown.length < jobs.length ? ', ' + shown.length + ' shown' : '');
    const head = el('tr', {}, JOB_COLUMNS.map(([key, name]) => el('th', {
      class: 'sortable' + (state.sort.key === key ? (state.sort.dir > 0 ? ' sorted-asc' : ' sorted-desc') : ''),
      onclick: () => { state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : (key === 'level' ? -1 : 1) }; render(); },
    }, name)));
    const rows = shown.map((j) => el('tr', {
      class: 'job', 'data-job': j.job_id, onclick: () => { location.hash = jobHash(j.job_id); },
    },
    el('td', {}, badge(j.level, j.ratio), j.stale ? el('span', { class: 'tag stale', title: 'what is shown may no longer hold: open the job for why' }, 'stale') : null),
    el('td', {}, el('a', { href: jobHash(j.job_id) }, j.job_name), el('div', { class: 'muted' }, el('code', {}, j.job_id)),
      clusters ? el('div', { class: 'muted cluster' }, j.flink_url) : null),
    el('td', {}, j.bottleneck || el('span', { class: 'muted' }, '—')),
    el('td', {}, j.cause ? el('div', {}, el('b', {}, causeText({ kind: j.cause, share: j.cause_share })), el('div', { class: 'muted' }, j.cause_summary || '')) : ''),
    el('td', { title: j.level_since_ms ? dateTime(j.level_since_ms) + (atLeast(j.level_since_ms, j.watched_since_ms) ? ' ' + FIRST_WINDOW : '') : '' },
      j.level_since_ms ? (LEVEL[levelKey(j.level)].word + ' for ' + (atLeast(j.level_since_ms, j.watched_since_ms) ? '≥ ' : '') + ago(j.level_since_ms)) : el('span', { class: 'muted' }, '—')),
    el('td', { title: j.updated_at_ms ? dateTime(j.updated_at_ms) : '' }, j.updated_at_ms ? ago(j.updated_at_ms) + ' ago' : 'never'),
    el('td', {}, j.state || el('span', { class: 'muted' }, 'gone'))));
    if (!rows.length) {
      rows.push(el('tr', {}, el('td', { colspan: JOB_COLUMNS.length, class: 'muted' },
        jobs.length ? 'No job matches the filter.' : 'No jobs yet: the collector lists the jobs of the Flink clusters it polls once agents report.')));
    }
    table.replaceChildren(el('thead', {}, head), el('tbody', {}, rows));
  }
  return every(REFRESH_MS, async () => {
    jobs = (await api('/api/v1/jobs')).jobs;
    render();
  });
}

const FIRST_WINDOW = '(so in bpmon\'s first window of this job: it may have begun earlier)';

// A level that held in bpmon's oldest window of the job began before bpmon saw it, or then.
function atLeast(since, watchedSince) { return !!watchedSince && since < watchedSince; }

function sinceText(what, since, watchedSince) {
  return atLeast(since, watchedSince)
    ? what + ' since at least ' + clock(since) + ' (' + ago(since) + '): so in bpmon\'s first window of it'
    : what + ' since ' + clock(since) + ' (' + ago(since) + ')';
}

// Watching more than one Flink cluster, a job is also named by its cluster's address (two
// clusters may run jobs of the same name).
function severalClusters(jobs) { return new Set(jobs.map((j) => j.flink_url)).size > 1; }

function backPressured(j) { return j.level === 'low' || j.level === 'high'; }

const MAX_CARDS = 12;

// One card per back-pressured job, worst first, above the table: the job, its bottleneck, why
// and since when, to be seen at a glance rather than read off a row. Each opens the job.
function troubleCards(into, jobs, clusters) {
  const bad = jobs.filter(backPressured).sort((a, b) => severity(b) - severity(a) || a.job_name.localeCompare(b.job_name));
  if (!bad.length) {
    into.replaceChildren(jobs.length ? el('div', { class: 'card calm' }, badge('ok', null), ' No job is back-pressured.') : '');
    return;
  }
  const cards = bad.slice(0, MAX_CARDS).map((j) => el('a', {
    class: 'trouble-card lvl-edge-' + levelKey(j.level) + (j.stale ? ' stale' : ''), href: jobHash(j.job_id), 'data-job': j.job_id,
  },
  el('div', { class: 'card-head' }, badge(j.level, j.ratio), ' ', el('b', {}, j.job_name),
    j.stale ? el('span', { class: 'tag stale' }, 'stale') : null),
  clusters ? el('div', { class: 'muted cluster' }, j.flink_url) : null,
  el('div', { class: 'card-vertex' }, j.bottleneck ? ['Bottleneck: ', el('b', {}, j.bottleneck)] : el('span', { class: 'muted' }, 'no bottleneck named yet')),
  j.cause ? el('div', { class: 'card-cause' }, 'Why: ', el('b', {}, causeText({ kind: j.cause, share: j.cause_share })),
    j.cause_summary ? el('div', { class: 'muted' }, j.cause_summary) : null) : null,
  el('div', { class: 'muted' }, j.level_since_ms ? sinceText(LEVEL[levelKey(j.level)].word, j.level_since_ms, j.watched_since_ms) : '')));
  if (bad.length > MAX_CARDS) cards.push(el('div', { class: 'card muted' }, (bad.length - MAX_CARDS) + ' more in the table below'));
  into.replaceChildren(...cards);
}

// ---------------------------------------------------------------------------------------------
// A job's page

function showJob(r) {
  if (!state.job) {
    state.job = { status: null, timeline: null, flame: null, flameKey: null };
  }
  const main = $('main');
  const parts = {
    title: el('div'), trouble: el('div'), graph: el('div', { class: 'graph-wrap', id: 'graph' }),
    subtasks: el('div', { id: 'subtasks' }), ranges: el('div', { class: 'toolbar', id: 'ranges' }),
    timeline: el('div', { id: 'timeline' }), flameHead: el('div', { class: 'toolbar' }), flame: el('div', { id: 'flame' }),
  };
  main.replaceChildren(parts.title, parts.trouble, el('h2', { text: 'Job graph' }),
    el('p', { class: 'muted' }, 'Sources on the left. Each vertex shows its level and ratio; click one for its subtasks.'),
    parts.graph, parts.subtasks, el('h2', { text: 'Timeline' }), parts.ranges, parts.timeline,
    el('h2', { text: 'Flame graph' }), parts.flameHead, parts.flame);
  const range = RANGES.find((x) => x[0] === r.range) || RANGES[0];
  parts.ranges.replaceChildren(el('span', { class: 'muted' }, 'Range:'), ...RANGES.map(([key]) => el('button', {
    class: key === range[0] ? 'on' : '', onclick: () => { location.hash = jobHash(r.job, r.vertex, key); },
  }, key)));
  if (state.job.status) renderStatus(parts, r);
  if (state.job.timeline) renderTimeline(parts, state.job.timeline);
  every(REFRESH_MS, async () => {
    state.job.status = await api('/api/v1/jobs/' + encodeURIComponent(r.job) + '/status');
    renderStatus(parts, r);
  }).then(() => every(SLOW_REFRESH_MS, async () => {
    const until = Date.now();
    const since = until - range[1];
    // Buckets no shorter than the sampling interval, so that a vertex sampled every 60 s
    // reads as a line, not as isolated bars.
    const interval = state.job.status ? state.job.status.settings.interval_ms : 1000;
    const points = Math.max(1, Math.min(240, Math.floor(range[1] / Math.max(1000, interval))));
    const q = '?since_ms=' + Math.floor(since) + '&until_ms=' + Math.floor(until) + '&points=' + points;
    state.job.timeline = await api('/api/v1/jobs/' + encodeURIComponent(r.job) + '/timeline' + q);
    renderTimeline(parts, state.job.timeline);
    // The bottleneck card says since when, from the timeline's episodes.
    if (state.job.status) renderStatus(parts, r);
    await loadFlame(parts, r, since, until);
  }));
}

function bottleneckOf(status) {
  return (status.diagnosis || []).find((f) => f.kind === 'bottleneck' || f.kind === 'network_bottleneck');
}

function renderStatus(parts, r) {
  const s = state.job.status;
  $('crumbs').replaceChildren(el('a', { href: '#/' }, 'Jobs'), el('span', { text: '›' }), el('span', { text: s.job_name }));
  parts.title.replaceChildren(el('h1', {}, s.job_name, ' ', badge(s.level,
    Math.max(...s.vertices.map((v) => v.ratio || 0)))),
  el('div', { class: 'muted' }, el('code', {}, s.job_id), ' · ', s.state || 'not running in Flink any more', ' · Flink ', s.flink_url,
    ' · updated ', s.updated_at_ms ? ago(s.updated_at_ms) + ' ago (' + clock(s.updated_at_ms) + ')' : 'never',
    ' · ', s.settings.samples + ' samples every ' + (s.settings.interval_ms / 1000) + ' s'));
  const banner = $('banner');
  banner.hidden = !s.stale;
  banner.className = 'banner stale';
  banner.replaceChildren(el('b', {}, 'Stale: '), (s.stale_reasons || []).join('; '));
  const b = bottleneckOf(s);
  const vname = (id) => (s.vertices.find((v) => v.vertex_id === id) || { name: id }).name;
  if (b) {
    const c = (b.causes || [])[0];
    const since = openSince(b);
    parts.trouble.replaceChildren(el('div', { class: 'card trouble', id: 'bottleneck' },
      el('div', { class: 'headline' }, 'Bottleneck: ', el('span', { id: 'bottleneck-vertex' }, vname(b.vertex_id)),
        c ? [' — ', el('span', { id: 'bottleneck-cause' }, causeText(c))] : null),
      c ? el('div', {}, c.summary) : el('div', {}, b.message),
      since ? el('div', { id: 'bottleneck-since' }, sinceText('Back-pressure', since, state.job.timeline.watched_since_ms)) : null,
      b.victims && b.victims.length ? el('div', { class: 'muted' }, 'Back-pressured by it: ' + b.victims.map(vname).join(', ')) : null,
      c && c.advice ? el('div', { class: 'advice' }, c.advice) : null));
  } else {
    parts.trouble.replaceChildren(el('div', { class: 'card' }, s.level === 'high' || s.level === 'low'
      ? 'Back-pressured, but no bottleneck is named yet (' + ((s.diagnosis || [])[0] || { message: 'no diagnosis' }).message + ')'
      : s.level ? 'No back-pressure: no bottleneck.' : 'No samples yet: the level appears once an agent reports this job\'s task threads.'));
  }
  const selected = r.vertex || (b && b.vertex_id) || null;
  parts.graph.replaceChildren(drawGraph(s, b, selected, (vid) => { location.hash = jobHash(r.job, vid, r.range); }));
  const v = s.vertices.find((x) => x.vertex_id === selected);
  parts.subtasks.replaceChildren(v ? subtaskTable(v) : el('p', { class: 'muted' }, 'Click a vertex for its subtasks.'));
}

// When the back-pressure behind a bottleneck began: the oldest episode still under way of the
// bottleneck or a vertex it back-pressures.
function openSince(b) {
  const t = state.job.timeline;
  if (!t) return null;
  const ids = new Set([b.vertex_id, ...(b.victims || [])]);
  const open = t.episodes.filter((e) => e.ended_at_ms === null || e.ended_at_ms === undefined).filter((e) => ids.has(e.vertex_id));
  return open.length ? Math.min(...open.map((e) => e.started_at_ms)) : null;
}

// ---------------------------------------------------------------------------------------------
// The graph: vertices in layers by their longest path from a source, left to right.

const NODE_W = 230; const NODE_H = 74; const GAP_X = 80; const GAP_Y = 22; const PAD = 16;

function layout(vertices, edges) {
  const index = new Map(vertices.map((v, i) => [v.vertex_id, i]));
  const preds = new Map(vertices.map((v) => [v.vertex_id, []]));
  const usable = edges.filter((e) => index.has(e.source) && index.has(e.target) && e.source !== e.target);
  for (const e of usable) preds.get(e.target).push(e.source);
  const layer = new Map();
  // Vertices come in topological order; when edges are unknown, each vertex is its own layer.
  vertices.forEach((v, i) => {
    const ps = preds.get(v.vertex_id);
    layer.set(v.vertex_id, usable.length ? (ps.length ? Math.max(...ps.map((p) => (layer.get(p) ?? 0) + 1)) : 0) : i);
  });
  const layers = [];
  for (const v of vertices) {
    const l = layer.get(v.vertex_id);
    (layers[l] = layers[l] || []).push(v.vertex_id);
  }
  const row = new Map();
  layers.forEach((ids, l) => {
    if (l > 0) {
      // Order each layer by where its inputs are, to keep edges from crossing.
      const bary = (id) => {
        const ps = preds.get(id).filter((p) => row.has(p));
        return ps.length ? ps.reduce((a, p) => a + row.get(p), 0) / ps.length : index.get(id);
      };
      ids.sort((a, b) => bary(a) - bary(b) || index.get(a) - index.get(b));
    }
    ids.forEach((id, i) => row.set(id, i));
  });
  const tallest = Math.max(1, ...layers.map((ids) => (ids ? ids.length : 0)));
  const pos = new Map();
  layers.forEach((ids, l) => (ids || []).forEach((id, i) => {
    const offset = (tallest - ids.length) * (NODE_H + GAP_Y) / 2;
    pos.set(id, { x: PAD + l * (NODE_W + GAP_X), y: PAD + offset + i * (NODE_H + GAP_Y) });
  }));
  return {
    pos, edges: usable,
    width: PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X,
    height: PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y,
  };
}

function shorten(text, max) { return text.length > max ? text.slice(0, max - 1) + '…' : text; }

function drawGraph(s, b, selected, onSelect) {
  const L = layout(s.vertices, s.edges || []);
  const victims = new Set(b ? b.victims || [] : []);
  const cause = b && (b.causes || [])[0];
  const root = svg('svg', { width: L.width, height: L.height, viewBox: '0 0 ' + L.width + ' ' + L.height, role: 'img', 'aria-label': 'job graph of ' + s.job_name },
    svg('defs', {},
      svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: 'auto-start-reverse' }, svg('path', { d: 'M 0 0 L 10 5 L 0 10 z' })),
      svg('pattern', { id: 'hatch', width: 8, height: 8, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' }, svg('line', { x1: 0, y1: 0, x2: 0, y2: 8 }))));
  for (const e of L.edges) {
    const a = L.pos.get(e.source); const c = L.pos.get(e.target);
    const x1 = a.x + NODE_W; const y1 = a.y + NODE_H / 2; const x2 = c.x; const y2 = c.y + NODE_H / 2;
    const mx = (x1 + x2) / 2;
    root.append(svg('path', { class: 'edge', d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`, 'marker-end': 'url(#arrow)' }));
    if (e.ship_strategy) root.append(svg('text', { class: 'edge-label', x: mx, y: (y1 + y2) / 2 - 4, 'text-anchor': 'middle' }, e.ship_strategy.toLowerCase()));
  }
  for (const v of s.vertices) {
    const p = L.pos.get(v.vertex_id);
    const k = levelKey(v.level);
    const isB = b && b.vertex_id === v.vertex_id;
    const role = isB ? 'BOTTLENECK' + (cause ? ': ' + (CAUSE[cause.kind] || cause.kind) : '')
      : victims.has(v.vertex_id) ? 'back-pressured by the bottleneck' : '';
    const g = svg('g', {
      class: 'node ' + k + (isB ? ' bottleneck' : '') + (v.vertex_id === selected ? ' selected' : '') + (s.stale ? ' stale' : ''),
      transform: `translate(${p.x},${p.y})`, tabindex: 0, 'data-vertex': v.vertex_id, 'data-level': k,
      onclick: () => onSelect(v.vertex_id), onkeydown: (e) => { if (e.key === 'Enter') onSelect(v.vertex_id); },
    },
    svg('title', {}, v.name + ' — ' + LEVEL[k].word + (v.ratio !== null && v.ratio !== undefined ? ' ' + ratioText(v.ratio) : '') + (role ? ' — ' + role : '')),
    svg('rect', { class: 'box', width: NODE_W, height: NODE_H, rx: 4 }),
    k === 'high' ? svg('rect', { class: 'hatch', width: NODE_W, height: NODE_H, rx: 4 }) : null,
    isB ? svg('rect', { class: 'outline', x: -5, y: -5, width: NODE_W + 10, height: NODE_H + 10, rx: 6 }) : null,
    svg('text', { class: 'name', x: 8, y: 18 }, shorten(v.name, 29)),
    svg('text', { class: 'level', x: 8, y: 38 }, LEVEL[k].shape + ' ' + LEVEL[k].word + (k !== 'none' ? ' ' + ratioText(v.ratio) : '') + ' · ×' + v.parallelism),
    role ? svg('text', { class: 'role', x: 8, y: 60 }, shorten(role, 33)) : null);
    root.append(g);
  }
  return root;
}

function subtaskTable(v) {
  const num = (x) => (x === undefined || x === null ? '' : x.toFixed(2));
  const rows = v.subtasks.map((t) => {
    const n = t.samples || 1;
    const bar = el('span', { class: 'bars', title: `blocked ${t.blocked}, soft ${t.soft}, idle ${t.idle}, busy ${t.busy} of ${t.samples} samples` },
      ['blocked', 'soft', 'idle', 'busy'].map((c) => { const sp = el('span', { class: c }); sp.style.width = (100 * t[c] / n) + '%'; return sp; }));
    return el('tr', {},
      el('td', { class: 'num' }, t.subtask),
      el('td', { class: 'lvlcell' }, badge(t.level, t.ratio)),
      el('td', {}, bar, ' ', `${t.blocked}/${t.soft}/${t.idle}/${t.busy}`),
      el('td', { class: 'num' }, num(t.metrics.outPoolUsage)),
      el('td', { class: 'num' }, num(t.metrics.inPoolUsage)),
      el('td', {}, t.taskmanager_id || ''),
      el('td', {}, t.host || ''),
      el('td', { class: 'muted' }, t.why || (t.top_frames && t.top_frames[0] ? el('code', {}, t.top_frames[0].frame) : '')));
  });
  return el('div', { class: 'card' },
    el('h2', {}, 'Subtasks of ', v.name, ' ', badge(v.level, v.ratio)),
    el('div', { class: 'legend muted' }, el('span', {}, el('i', { class: 'blocked' }), 'blocked (hard)'), el('span', {}, el('i', { class: 'soft' }), 'soft'),
      el('span', {}, el('i', { class: 'idle' }), 'idle'), el('span', {}, el('i', { class: 'busy' }), 'busy')),
    el('table', { class: 'subtasks' },
      el('thead', {}, el('tr', {}, ['#', 'Level', 'blocked/soft/idle/busy', 'outPool', 'inPool', 'TaskManager', 'Host', 'Busy in'].map((h) => el('th', {}, h)))),
      el('tbody', {}, rows)));
}

// ---------------------------------------------------------------------------------------------
// The timeline: a lane per vertex, a bar per bucket (height: the worst subtask's ratio, colour:
// its level), the episodes shaded across all lanes.

function renderTimeline(parts, t) {
  const W = 1100; const LABEL = 190; const LANE = 44; const TOP = 22; const AXIS = 22;
  const lanes = t.vertices;
  const H = TOP + lanes.length * LANE + AXIS;
  const x = (ms) => LABEL + (W - LABEL - 8) * (ms - t.since_ms) / Math.max(1, t.until_ms - t.since_ms);
  const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'back-pressure timeline' });
  for (const e of t.episodes) {
    const x1 = x(Math.max(e.started_at_ms, t.since_ms));
    const x2 = x(e.ended_at_ms ? Math.min(e.ended_at_ms, t.until_ms) : t.until_ms);
    chart.append(svg('rect', { class: 'episode', x: x1, y: TOP, width: Math.max(1, x2 - x1), height: lanes.length * LANE },
      svg('title', {}, `${e.vertex}: ${LEVEL[levelKey(e.peak_level)].word} ${ratioText(e.peak_ratio)} at its peak, from ${dateTime(e.started_at_ms)} `
        + (e.ended_at_ms ? 'to ' + dateTime(e.ended_at_ms) : '(under way)')
        + (e.bottleneck ? '; bottleneck ' + e.bottleneck.vertex + ': ' + e.bottleneck.summary : ''))));
    chart.append(svg('line', { class: 'episode-edge', x1, x2: x1, y1: TOP - 4, y2: TOP + lanes.length * LANE }));
  }
  const episodesShown = t.episodes.length;
  chart.append(svg('text', { class: 'episode-label', x: LABEL, y: 13 }, episodesShown
    ? episodesShown + ' episode' + (episodesShown === 1 ? '' : 's') + ' (shaded; hover for details)'
    : 'no back-pressure episode in this range'));
  let points = 0;
  lanes.forEach((lane, i) => {
    const y0 = TOP + i * LANE;
    const base = y0 + LANE - 6; const h = LANE - 12;
    chart.append(svg('text', { class: 'lane-name', x: 4, y: y0 + LANE / 2 + 4 }, shorten(lane.name, 28), svg('title', {}, lane.name)));
    chart.append(svg('line', { class: 'axis', x1: LABEL, x2: W - 8, y1: base, y2: base }));
    for (const thr of [0.1, 0.5]) chart.append(svg('line', { class: 'threshold', x1: LABEL, x2: W - 8, y1: base - h * thr, y2: base - h * thr }));
    const bw = Math.max(1.5, (W - LABEL - 8) * t.bucket_ms / Math.max(1, t.until_ms - t.since_ms) - 0.5);
    for (const p of lane.points) {
      const r = p.ratio || 0;
      const k = levelKey(p.level);
      const bh = Math.max(2, h * r);
      points++;
      chart.append(svg('rect', { class: 'bar ' + k, x: x(p.at_ms), y: base - bh, width: bw, height: bh },
        svg('title', {}, `${lane.name} at ${clock(p.at_ms)}: ${LEVEL[k].word} ${ratioText(p.ratio)} (${p.windows} window${p.windows === 1 ? '' : 's'})`)));
    }
  });
  const ticks = 6;
  for (let i = 0; i <= ticks; i++) {
    const ms = t.since_ms + (t.until_ms - t.since_ms) * i / ticks;
    const label = t.until_ms - t.since_ms > 86400e3 ? dateTime(ms).slice(5, 16) : clock(ms).slice(0, 5);
    chart.append(svg('text', { x: x(ms), y: H - 6, 'text-anchor': i === 0 ? 'start' : i === ticks ? 'end' : 'middle' }, label));
  }
  chart.setAttribute('data-points', points);
  parts.timeline.replaceChildren(chart, el('p', { class: 'muted' },
    'Bar height: the worst subtask\'s back-pressure ratio in each ' + Math.round(t.bucket_ms / 1000) + ' s (dashed: 0.10 and 0.50, the LOW and HIGH thresholds); colour and tooltip: its level.'));
}

// ---------------------------------------------------------------------------------------------
// The flame graph of a vertex's busy samples (the bottleneck's by default), as an icicle.

async function loadFlame(parts, r, since, until) {
  const s = state.job.status;
  const b = s && bottleneckOf(s);
  const vertex = r.vertex || (b && b.vertex_id);
  if (!vertex) {
    parts.flameHead.replaceChildren();
    parts.flame.replaceChildren(el('p', { class: 'muted', id: 'flame-empty' }, 'No bottleneck now: click a vertex to see where its busy time went.'));
    return;
  }
  const q = '?vertex=' + encodeURIComponent(vertex) + '&since_ms=' + Math.floor(since) + '&until_ms=' + Math.floor(until);
  const base = '/api/v1/jobs/' + encodeURIComponent(r.job) + '/flame' + q;
  const f = await api(base);
  const download = el('button', {
    onclick: async () => {
      const text = await api(base + '&format=folded', true);
      const a = el('a', { href: URL.createObjectURL(new Blob([text], { type: 'text/plain' })), download: `bpmon-${f.job_id}-${f.vertex_id}.folded` });
      document.body.append(a); a.click(); a.remove();
    },
  }, 'Download folded stacks');
  parts.flameHead.replaceChildren(el('span', {}, 'Busy samples of ', el('b', {}, f.vertex), (b && b.vertex_id === f.vertex_id ? ' (the bottleneck)' : ''),
    ': ' + f.samples + ' with a stack.'), download,
  el('span', { class: 'muted' }, 'The folded format is what flamegraph.pl, speedscope and Pyroscope read.'));
  const hot = b && b.vertex_id === f.vertex_id && b.top_frames && b.top_frames[0] ? b.top_frames[0].frame : null;
  state.job.flame = { view: f, zoom: [], hot };
  drawFlame(parts.flame);
}

function flameTree(stacks) {
  const root = { name: 'all', value: 0, children: new Map() };
  for (const s of stacks) {
    root.value += s.samples;
    let node = root;
    for (const frame of s.folded.split(';')) {
      let c = node.children.get(frame);
      if (!c) { c = { name: frame, value: 0, children: new Map() }; node.children.set(frame, c); }
      c.value += s.samples;
      node = c;
    }
  }
  return root;
}

function hue(name) {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) | 0;
  return 'f' + (Math.abs(h) % 5);
}

// Whether a folded frame (`class.method`) is the frame a status names (`class.method(File:line)`).
function sameFrame(frame, top) { return top && (top === frame || top.startsWith(frame + '(')); }

function drawFlame(into) {
  const fl = state.job.flame;
  const all = flameTree(fl.view.stacks);
  let root = all;
  for (const name of fl.zoom) root = root.children.get(name) || root;
  if (!root.value) {
    into.replaceChildren(el('p', { class: 'muted', id: 'flame-empty' }, 'No busy samples with a stack in this range.'));
    return;
  }
  const W = 1100; const ROW = 17; const MAXDEPTH = 80;
  const rects = [];
  let depth = 0;
  (function walk(node, x0, d, path) {
    if (d > MAXDEPTH) return;
    depth = Math.max(depth, d);
    const w = W * node.value / root.value;
    rects.push({ node, x: x0, w, d, path });
    let x = x0;
    for (const c of [...node.children.values()].sort((a, b) => b.value - a.value)) {
      const cw = W * c.value / root.value;
      if (cw >= 0.4) walk(c, x, d + 1, [...path, c.name]);
      x += cw;
    }
  })(root, 0, 0, fl.zoom);
  const chart = svg('svg', { class: 'flame', viewBox: `0 0 ${W} ${(depth + 1) * ROW}`, role: 'img', 'aria-label': 'flame graph' });
  for (const r of rects) {
    const isOther = r.node.name === '(other stacks)';
    const isHot = sameFrame(r.node.name, fl.hot);
    const g = svg('g', { 'data-frame': r.node.name, onclick: () => { fl.zoom = r.path; drawFlame(into); } },
      svg('title', {}, `${r.node.name} — ${r.node.value} samples (${pct(r.node.value / all.value)} of all)`),
      svg('rect', { class: isHot ? 'hot' : isOther ? 'other' : hue(r.node.name), x: r.x, y: r.d * ROW, width: Math.max(0.5, r.w), height: ROW - 1 }));
    if (r.w > 40) {
      const chars = Math.floor((r.w - 6) / 6.7);
      g.append(svg('text', { x: r.x + 3, y: r.d * ROW + 12 }, shorten(r.node.name, chars)));
    }
    chart.append(g);
  }
  const crumbs = el('div', { class: 'toolbar' }, fl.zoom.length
    ? [el('button', { onclick: () => { fl.zoom = []; drawFlame(into); } }, 'Reset zoom'), el('code', {}, fl.zoom.join(' › '))]
    : el('span', { class: 'muted' }, 'Root on top, callees below; width: share of the busy samples. Click a frame to zoom in.'));
  into.replaceChildren(crumbs, chart);
}

route();
