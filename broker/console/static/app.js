// psvn console: plain JavaScript, no build step, no dependencies.
// The token lives in sessionStorage (this tab only) and goes out only as an Authorization header;
// everything the server sends is rendered with textContent, never as HTML.
'use strict';

const TOKEN_KEY = 'psvn-console-token';
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'title' || k === 'type') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const opts = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (resp.status === 401 && path !== '/api/whoami') {
    signOut((data && data.detail) || 'Your session has ended; sign in again.');
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// --- problems -----------------------------------------------------------------------------------

function problemView(err) {
  const p = err.problem || {};
  const box = el('div', { class: 'problem', role: 'alert' },
    el('strong', { text: p.title || 'Error' }), ' ', el('span', { text: err.message }));
  if (p.rule) box.append(' ', el('span', { class: 'rule', text: `[${p.rule}]` }));
  if (Array.isArray(p.violations) && p.violations.length) {
    box.append(el('ul', {}, p.violations.map((v) =>
      el('li', {}, el('code', { text: v.path }), ' ', v.message))));
  }
  return box;
}

function show(target, ...nodes) { clear(target).append(...nodes); }

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString('en-GB', { dateStyle: 'medium', timeStyle: 'medium' });
}

// --- session ------------------------------------------------------------------------------------

let me = null;
let published = null;

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  $('app').hidden = true;
  $('who').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    me = await api('GET', '/api/whoami');
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    $('login-error').textContent = err.message;
    return false;
  }
  $('login-error').textContent = '';
  $('login').hidden = true;
  $('app').hidden = false;
  $('who').hidden = false;
  $('who-name').textContent = me.user;
  $('who-role').textContent = me.role;
  document.body.dataset.role = me.role;
  applyRole();
  selectTab(me.role === 'operator' ? 'overview' : (me.role === 'approver' ? 'proposals' : 'editor'));
  return true;
}

function applyRole() {
  const editor = me.role === 'compliance-officer' || me.role === 'approver';
  $('tabbtn-editor').hidden = !editor;
  $('submit-form').hidden = me.role !== 'compliance-officer';
  $('rules').readOnly = !editor;
}

// --- tabs ---------------------------------------------------------------------------------------

const loaders = {
  editor: loadEditor,
  proposals: loadProposals,
  history: loadHistory,
  overview: loadOverview,
};
let overviewTimer = null;

function selectTab(name) {
  for (const btn of document.querySelectorAll('[data-tab]')) {
    const on = btn.dataset.tab === name;
    btn.setAttribute('aria-selected', on ? 'true' : 'false');
    $(`tab-${btn.dataset.tab}`).hidden = !on;
  }
  clearInterval(overviewTimer);
  if (name === 'overview') overviewTimer = setInterval(() => loadOverview().catch(() => {}), 5000);
  loaders[name]().catch((err) => console.error(err));
}

// --- editor -------------------------------------------------------------------------------------

let lintTimer = null;
let lintSeq = 0;
let errorLines = new Map();

async function loadEditor() {
  if (published && $('rules').value) return;
  published = await api('GET', '/api/policy/current');
  $('rules').value = published.rules_text;
  $('tests').value = published.tests_text;
  editorStatus();
  renderGutter();
  runLint();
}

function editorStatus() {
  const p = published;
  const by = p.proposer ? ` proposed by ${p.proposer}, approved by ${p.approver},` : '';
  show($('editor-status'),
    el('span', { text: `Published version ${p.version}` }), `${by} ${when(p.published_at)}. `,
    el('strong', { text: `You are editing the rules for version ${p.version + 1}.` }),
    el('span', { class: 'hint', text: ` (text from ${p.source})` }));
}

function renderGutter() {
  const lines = $('rules').value.split('\n').length;
  const gutter = clear($('gutter'));
  for (let n = 1; n <= lines; n += 1) {
    const msg = errorLines.get(n);
    const row = el('span', { class: msg ? `ln ${msg.severity}` : 'ln', 'data-line': String(n), title: msg ? msg.text : undefined },
      msg ? (msg.severity === 'error' ? '✖ ' : '▲ ') : '', String(n));
    gutter.append(row, '\n');
  }
  gutter.scrollTop = $('rules').scrollTop;
}

function jumpToLine(n) {
  const ta = $('rules');
  const lines = ta.value.split('\n');
  let start = 0;
  for (let i = 0; i < n - 1 && i < lines.length; i += 1) start += lines[i].length + 1;
  ta.focus();
  ta.setSelectionRange(start, start + (lines[n - 1] || '').length);
  const lineHeight = parseFloat(getComputedStyle(ta).lineHeight) || 18;
  ta.scrollTop = Math.max(0, (n - 5) * lineHeight);
}

function renderFindings(result) {
  errorLines = new Map();
  const list = clear($('findings'));
  for (const f of result.findings) {
    if (f.line && f.file === 'rules.toml' && (f.severity === 'error' || f.severity === 'warning')) {
      const prev = errorLines.get(f.line);
      if (!prev || prev.severity !== 'error') errorLines.set(f.line, { severity: f.severity, text: f.message });
    }
    const where = f.line ? `line ${f.line}` : (f.file || 'policy');
    const item = el('li', { class: `finding ${f.severity}` },
      el('span', { class: 'sev', text: f.severity }), ' ',
      f.line ? el('a', { href: '#', class: 'where', text: where, 'data-line': String(f.line) }) : el('span', { class: 'where', text: where }),
      f.rule_id ? el('code', { text: f.rule_id }) : null, ' ',
      el('span', { class: 'msg', text: f.message }));
    list.append(item);
  }
  if (!result.findings.length) list.append(el('li', { class: 'finding ok', text: 'No findings.' }));
  const c = result.counts;
  const badge = $('lint-summary');
  badge.className = `badge ${c.error ? 'bad' : (c.warning ? 'warn' : 'good')}`;
  badge.textContent = c.error ? `${c.error} lint error(s)` : `Lint OK (${c.warning} warning(s), ${c.info} note(s))`;
  renderGutter();
  if (!c.error) clearStaleProblems();
}

// An error box answered an older text: once the rules lint clean it no longer applies, so it goes
// (results that succeeded stay until the next run replaces them).
function clearStaleProblems() {
  for (const id of ['test-results', 'sim-results', 'submit-result']) {
    const box = $(id);
    if (box.querySelector('.problem')) clear(box);
  }
}

async function runLint() {
  const seq = ++lintSeq;
  try {
    const result = await api('POST', '/api/policy/lint', { rules_text: $('rules').value });
    if (seq === lintSeq) renderFindings(result);
    return result;
  } catch (err) {
    if (seq === lintSeq) show($('findings'), el('li', {}, problemView(err)));
    return null;
  }
}

async function runTests() {
  const target = $('test-results');
  show(target, el('p', { class: 'busy', text: 'Running the example decisions…' }));
  try {
    const r = await api('POST', '/api/policy/test', { rules_text: $('rules').value, tests_text: $('tests').value });
    const head = el('h3', { class: r.ok ? 'good' : 'bad', id: 'test-summary',
      text: `Tests: ${r.passed} passed, ${r.failed} failed` });
    const rows = [...r.results].sort((a, b) => Number(a.passed) - Number(b.passed)).map((c) =>
      el('tr', { class: c.passed ? 'pass' : 'fail' },
        el('td', { text: c.passed ? 'PASS' : 'FAIL' }), el('td', { text: c.name }),
        el('td', { text: `${c.allow ? 'allow' : 'deny'} by ${c.rule_ids.join(', ')}` }),
        el('td', { text: c.problems.join('; ') })));
    const table = el('table', { class: 'compact' },
      el('thead', {}, el('tr', {}, ['', 'Example', 'Decision', 'Problem'].map((h) => el('th', { text: h })))),
      el('tbody', {}, rows));
    const parts = [head];
    if (r.uncovered.length) parts.push(el('p', { class: 'hint', text: `Rules no example exercises: ${r.uncovered.join(', ')}` }));
    parts.push(r.failed ? table : el('details', {}, el('summary', { text: 'Show every example' }), table));
    show(target, ...parts);
  } catch (err) {
    show(target, problemView(err));
  }
}

function outcome(o) { return `${o.allow ? 'allow' : 'deny'} by ${o.rule_ids.join(', ')}`; }

const KIND = { 'now-denied': 'Now denied', 'now-allowed': 'Now allowed', 'rules-changed': 'Other rules decide' };

function simulationView(r) {
  const d = r.diff;
  const t = r.traffic;
  const parts = [el('h3', { id: 'sim-summary',
    text: `What would change from version ${r.old_version} to ${r.new_version}` })];
  parts.push(el('p', {},
    `Every decision the two versions can tell apart (${d.compared.toLocaleString('en-GB')} compared): `,
    el('strong', { class: 'bad', text: `${d.counts['now-denied']} now denied` }), ', ',
    el('strong', { class: 'good', text: `${d.counts['now-allowed']} now allowed` }), ', ',
    `${d.counts['rules-changed']} decided by other rules.`));
  const groupTable = (groups) => el('table', { class: 'compact' },
    el('thead', {}, el('tr', {}, ['Change', 'Who → whom', 'Type', 'Purpose', 'Level', 'Cases', 'Was', 'Now'].map((h) => el('th', { text: h })))),
    el('tbody', {}, groups.map((g) => el('tr', { class: g.kind },
      el('td', { text: KIND[g.kind] }),
      el('td', { text: `${g.action} ${g.from_type} → ${g.to || '(feed)'}${g.topic ? ` on ${g.topic}` : ''}` }),
      el('td', { text: g.type }), el('td', { text: g.purpose }), el('td', { text: g.classification }),
      el('td', { text: String(g.count) }),
      el('td', { text: outcome(g.example.old) }), el('td', { text: outcome(g.example.new) })))));
  const flips = d.groups.filter((g) => g.kind !== 'rules-changed');
  const others = d.groups.filter((g) => g.kind === 'rules-changed');
  if (flips.length) parts.push(groupTable(flips));
  if (others.length) {
    parts.push(el('details', {}, el('summary', { text: `Same outcome, decided by other rules (${others.length} groups shown)` }),
      groupTable(others)));
  }
  if (d.group_count > d.groups.length) parts.push(el('p', { class: 'hint', text: `…and ${d.group_count - d.groups.length} more groups (psvn policy diff lists them all).` }));
  parts.push(el('h4', { text: 'Recent traffic' }));
  parts.push(el('p', { id: 'traffic-summary' },
    `${t.replayed} recent decisions replayed from the audit stream (${t.events} events read`,
    t.skipped ? `, ${t.skipped} about members no longer registered` : '', '): ',
    el('strong', { text: `${t.changes.length} would be decided differently` }), '.'));
  if (t.changes.length) {
    parts.push(el('table', { class: 'compact' },
      el('thead', {}, el('tr', {}, ['Change', 'Message', 'When', 'From → to', 'Type', 'Purpose', 'Was', 'Now'].map((h) => el('th', { text: h })))),
      el('tbody', {}, t.changes.map((c) => el('tr', { class: c.kind },
        el('td', { text: KIND[c.kind] }), el('td', {}, el('code', { text: c.message_id })), el('td', { text: when(c.time) }),
        el('td', { text: `${c.sender} → ${c.to}` }), el('td', { text: c.type }), el('td', { text: c.purpose }),
        el('td', { text: outcome(c.old) }), el('td', { text: outcome(c.new) }))))));
  }
  return parts;
}

async function runSimulation() {
  const target = $('sim-results');
  show(target, el('p', { class: 'busy', text: 'Comparing every decision and replaying recent traffic (a few seconds)…' }));
  try {
    const r = await api('POST', '/api/policy/simulate', { rules_text: $('rules').value });
    show(target, ...simulationView(r));
  } catch (err) {
    show(target, problemView(err));
  }
}

async function submitProposal(ev) {
  ev.preventDefault();
  const target = $('submit-result');
  show(target, el('p', { class: 'busy', text: 'Checking and submitting…' }));
  try {
    const p = await api('POST', '/api/proposals', {
      rules_text: $('rules').value, tests_text: $('tests').value, note: $('note').value,
    });
    show(target, el('p', { class: 'good', id: 'submitted', role: 'status' },
      'Submitted ', el('code', { text: p.id }), ` (version ${p.version}) for approval by another person.`));
    $('note').value = '';
  } catch (err) {
    show(target, problemView(err));
  }
}

// --- proposals ----------------------------------------------------------------------------------

async function loadProposals() {
  const { proposals } = await api('GET', '/api/proposals');
  const body = clear($('proposals-table').tBodies[0]);
  if (!proposals.length) body.append(el('tr', {}, el('td', { colSpan: 8, class: 'hint', text: 'No proposals yet.' })));
  for (const p of proposals) {
    const actions = el('td', { class: 'actions' },
      el('button', { type: 'button', class: 'quiet', 'data-action': 'review', 'data-id': p.id, text: 'Review' }));
    if (me.role === 'approver' && p.status === 'proposed') {
      actions.append(el('button', { type: 'button', class: 'primary', 'data-action': 'approve', 'data-id': p.id, text: 'Approve' }));
    }
    if (me.role === 'approver' && p.status === 'approved') {
      actions.append(el('button', { type: 'button', class: 'primary', 'data-action': 'publish', 'data-id': p.id, text: 'Publish' }));
    }
    const mine = me.role === 'compliance-officer' && p.proposer === me.user;
    if ((me.role === 'approver' || mine) && (p.status === 'proposed' || p.status === 'approved')) {
      actions.append(el('button', { type: 'button', class: 'quiet danger', 'data-action': 'reject', 'data-id': p.id, text: mine ? 'Withdraw' : 'Reject' }));
    }
    body.append(el('tr', { 'data-proposal': p.id, class: `status-${p.status}` },
      el('td', {}, el('code', { text: p.id })), el('td', { text: String(p.version) }),
      el('td', {}, el('span', { class: `pill ${p.status}`, text: p.status })),
      el('td', { text: p.proposer }), el('td', { text: when(p.proposed_at) }),
      el('td', { text: p.approver || '' }), el('td', { text: p.note || p.reason || '' }), actions));
  }
}

function diffView(text) {
  const pre = el('pre', { class: 'diff' });
  for (const line of text.split('\n')) {
    let cls = '';
    if (line.startsWith('+++') || line.startsWith('---')) cls = 'file';
    else if (line.startsWith('@@')) cls = 'hunk';
    else if (line.startsWith('+')) cls = 'add';
    else if (line.startsWith('-')) cls = 'del';
    pre.append(el('span', { class: cls, text: line }), '\n');
  }
  return pre;
}

async function reviewProposal(id) {
  const target = $('proposal-detail');
  show(target, el('p', { class: 'busy', text: 'Loading…' }));
  const p = await api('GET', `/api/proposals/${encodeURIComponent(id)}`);
  const parts = [
    el('h3', { text: `Proposal ${p.id}: version ${p.version} (drafted on ${p.base_version})` }),
    el('p', {}, `Proposed by ${p.proposer}, ${when(p.proposed_at)}. `,
      p.note ? el('em', { text: `“${p.note}”` }) : '',
      ` Lint: ${p.lint_counts.error || 0} errors, ${p.lint_counts.warning || 0} warnings.`,
      p.suite_passed !== null ? ` Examples: ${p.suite_passed} passed, ${p.suite_failed} failed.` : ''),
    el('h4', { text: 'Changes to rules.toml' }),
    p.rules_diff ? diffView(p.rules_diff) : el('p', { class: 'hint', text: 'No textual change.' }),
  ];
  if (me.role !== 'operator') {
    const simBox = el('div', { class: 'results' });
    const btn = el('button', { type: 'button', text: 'What would change?' });
    btn.addEventListener('click', async () => {
      show(simBox, el('p', { class: 'busy', text: 'Simulating…' }));
      try { show(simBox, ...simulationView(await api('GET', `/api/proposals/${encodeURIComponent(id)}/simulate`))); } catch (err) { show(simBox, problemView(err)); }
    });
    parts.push(btn, simBox);
  }
  show(target, ...parts);
}

async function proposalAction(action, id) {
  const target = $('proposal-message');
  try {
    let p;
    if (action === 'review') { await reviewProposal(id); return; }
    if (action === 'reject') {
      const reason = window.prompt('Reason (recorded with the proposal):', '') ;
      if (reason === null) return;
      p = await api('POST', `/api/proposals/${encodeURIComponent(id)}/reject`, { reason });
      show(target, el('p', { class: 'good', role: 'status', text: `Proposal ${p.id} is ${p.status}.` }));
    } else {
      if (action === 'publish' && !(await confirmPublish(id))) {
        show(target, el('p', { class: 'hint', role: 'status', id: 'publish-cancelled', text: `Proposal ${id} was not published.` }));
        return;
      }
      show(target, el('p', { class: 'busy', text: action === 'publish' ? 'Signing and publishing…' : 'Approving…' }));
      p = await api('POST', `/api/proposals/${encodeURIComponent(id)}/${action}`);
      const msg = action === 'publish'
        ? `Published version ${p.version} (proposed by ${p.proposer}, approved by ${p.approver}). Gateways reload it now.`
        : `Approved proposal ${p.id} (version ${p.version}). It can now be published.`;
      show(target, el('p', { class: 'good', role: 'status', id: action === 'publish' ? 'published-msg' : 'approved-msg', text: msg }));
      if (action === 'publish') published = null;
    }
  } catch (err) {
    show(target, problemView(err));
  }
  await loadProposals();
}

// Publishing changes what every member may send, at once: say so, with what would change, and
// publish only when the approver confirms.
async function confirmPublish(id) {
  const dialog = $('confirm-publish');
  const p = await api('GET', `/api/proposals/${encodeURIComponent(id)}`);
  $('confirm-publish-text').textContent = `Publish version ${p.version} (proposal ${p.id} by ${p.proposer}, ` +
    `approved by ${p.approver}) to every gateway? They reload it within seconds and decide every message by it.`;
  const impact = $('confirm-publish-impact');
  impact.textContent = 'Working out what would change…';
  api('GET', `/api/proposals/${encodeURIComponent(id)}/simulate`).then((r) => {
    const c = r.diff.counts;
    impact.textContent = `${c['now-denied']} kinds of decision now denied, ${c['now-allowed']} now allowed; ` +
      `${r.traffic.changes.length} of ${r.traffic.replayed} recent messages would be decided differently.`;
  }).catch(() => { impact.textContent = ''; });
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'publish'), { once: true });
    dialog.showModal();
    $('confirm-publish-no').focus();
  });
}

// --- history and overview -----------------------------------------------------------------------

async function loadHistory() {
  const { history } = await api('GET', '/api/history');
  const body = clear($('history-table').tBodies[0]);
  for (const h of history) {
    body.append(el('tr', { class: h.accepted ? '' : 'refused', 'data-version': String(h.version) },
      el('td', { text: String(h.version) }), el('td', { text: h.proposer }), el('td', { text: h.approver }),
      el('td', { text: when(h.published_at) }), el('td', {}, h.proposal ? el('code', { text: h.proposal }) : ''),
      el('td', { text: h.accepted ? 'accepted' : `refused: ${h.reason}` }),
      el('td', {}, h.accepted ? el('button', { type: 'button', class: 'quiet', 'data-view': String(h.version), text: 'View' }) : '')));
  }
  acceptedVersions = history.filter((h) => h.accepted).map((h) => h.version);
}

let acceptedVersions = [];
let viewedVersion = null;

async function viewVersion(version) {
  const detail = $('version-detail');
  detail.hidden = false;
  clear($('version-diff'));
  clear($('version-message'));
  try {
    const v = await api('GET', `/api/history/${version}`);
    viewedVersion = v.version;
    $('version-title').textContent = `Version ${v.version}: proposed by ${v.proposer}, approved by ${v.approver}, ` +
      `published ${when(v.published_at)} (text from ${v.source})`;
    $('version-text').textContent = v.rules_text;
    const select = clear($('diff-against'));
    for (const other of acceptedVersions.filter((n) => n !== v.version)) {
      select.append(el('option', { value: String(other), text: String(other) }));
    }
    const older = acceptedVersions.filter((n) => n < v.version);
    if (older.length) select.value = String(Math.max(...older));
    $('btn-diff').disabled = !select.options.length;
  } catch (err) {
    show($('version-message'), problemView(err));
  }
}

async function diffVersions() {
  const against = $('diff-against').value;
  if (viewedVersion === null || !against) return;
  const target = $('version-diff');
  try {
    const d = await api('GET', `/api/history/${viewedVersion}/diff?against=${encodeURIComponent(against)}`);
    show(target, el('h4', { text: `Changes from version ${d.old_version} to ${d.new_version}` }),
      d.rules_diff ? diffView(d.rules_diff) : el('p', { class: 'hint', text: 'No textual change.' }));
  } catch (err) {
    show(target, problemView(err));
  }
}

async function loadOverview() {
  const o = await api('GET', '/api/overview');
  $('overview-status').textContent = `Published policy version ${o.published_version}.`;
  const body = clear($('members-table').tBodies[0]);
  for (const m of o.members) {
    let gw;
    if (!m.watching_policy) gw = el('span', { class: 'pill bad', text: 'not connected' });
    else gw = el('span', { class: `pill ${m.in_step ? 'good' : 'warn'}`, text: `version ${m.policy_version}` });
    const counts = Object.entries(m.audit_counts).map(([k, v]) => `${k} ${v}`).join(', ');
    const last = m.last_audit_time ? `${when(m.last_audit_time)} (version ${m.last_audit_policy_version})` : '';
    body.append(el('tr', { 'data-member': m.address },
      el('td', {}, el('code', { text: m.address }), ' ', m.name), el('td', { text: m.type }),
      el('td', { text: m.status }), el('td', {}, gw), el('td', { text: last }), el('td', { text: counts })));
  }
  const totals = Object.entries(o.audit.totals).map(([k, v]) => `${k}: ${v}`).join(' · ');
  $('audit-totals').textContent = `Last ${o.audit.window} events. ${totals}`;
}

// --- wiring -------------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    $('token').value = '';
    if (token) await signIn(token);
  });
  $('logout').addEventListener('click', () => signOut(''));
  for (const btn of document.querySelectorAll('[data-tab]')) btn.addEventListener('click', () => selectTab(btn.dataset.tab));
  $('rules').addEventListener('input', () => {
    renderGutter();
    clearTimeout(lintTimer);
    lintTimer = setTimeout(runLint, 600);
  });
  $('rules').addEventListener('scroll', () => { $('gutter').scrollTop = $('rules').scrollTop; });
  $('findings').addEventListener('click', (ev) => {
    const a = ev.target.closest('a[data-line]');
    if (a) { ev.preventDefault(); jumpToLine(Number(a.dataset.line)); }
  });
  $('btn-lint').addEventListener('click', runLint);
  $('btn-test').addEventListener('click', runTests);
  $('btn-simulate').addEventListener('click', runSimulation);
  $('btn-reset').addEventListener('click', () => { published = null; $('rules').value = ''; loadEditor(); });
  $('submit-form').addEventListener('submit', submitProposal);
  $('history-table').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-view]');
    if (b) viewVersion(Number(b.dataset.view));
  });
  $('btn-diff').addEventListener('click', diffVersions);
  $('proposals-table').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (b) proposalAction(b.dataset.action, b.dataset.id);
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token); else signOut('');
});
