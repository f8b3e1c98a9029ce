// attnd console: plain JavaScript against attnd's own routes, no framework.
//
// Four views behind the URL's hash (#playground, #recall, #training,
// #cost).  Every request carries the API key typed in the header, kept in
// sessionStorage only (gone when the tab closes).  Nothing polls unless its
// view is open: the cost view reads /metrics every 2 s while shown, the
// training view reads /train every 2 s and the selected job every 0.4 s
// while it runs.  Charts are uPlot (ui/vendor, MIT).
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = 'attnd.apiKey';
  let apiKey = sessionStorage.getItem(KEY) || '';
  let models = [];

  // ---- requests --------------------------------------------------------------
  function headers(json) {
    const h = {};
    if (json) h['Content-Type'] = 'application/json';
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    return h;
  }

  class ApiError extends Error {
    constructor(status, message, field) { super(message); this.status = status; this.field = field; }
  }

  function errorOf(status, text) {
    let msg = text || `HTTP ${status}`, field;
    try {
      const e = JSON.parse(text).error;
      if (e) { msg = typeof e === 'string' ? e : e.message; field = e.field; }
    } catch { /* not JSON */ }
    if (status === 401) { msg += ' — enter the API key above'; $('api-key').focus(); }
    return new ApiError(status, `${status}: ${msg}${field ? ` (${field})` : ''}`, field);
  }

  async function api(path, { method = 'GET', body, signal } = {}) {
    const r = await fetch(path, {
      method, headers: headers(body !== undefined), signal,
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    if (!r.ok) throw errorOf(r.status, text);
    return text ? JSON.parse(text) : null;
  }

  function notice(msg, kind = 'info') {
    const n = $('notice');
    n.textContent = msg;
    n.className = `notice ${kind}`;
    n.hidden = !msg;
  }
  const fail = (e) => notice(e.message || String(e), 'error');

  function el(tag, props = {}, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') e.className = v;
      else if (k === 'data') Object.assign(e.dataset, v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }

  const num = (id) => { const v = $(id).value.trim(); return v === '' ? undefined : Number(v); };
  const fmt = (x, d = 1) => (x === undefined || x === null || !isFinite(x) ? '–' : x.toFixed(d));

  // ---- views -------------------------------------------------------------------
  const VIEWS = ['playground', 'recall', 'training', 'cost'];
  const onShow = {}, onHide = {};
  let current = null;

  function route() {
    const v = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'playground';
    if (v === current) return;
    if (current && onHide[current]) onHide[current]();
    current = v;
    for (const name of VIEWS) {
      $(name).hidden = name !== v;
      $(`tab-${name}`).setAttribute('aria-selected', String(name === v));
    }
    if (onShow[v]) onShow[v]();
    requestAnimationFrame(resize);
  }

  // ---- models -------------------------------------------------------------------
  function fill(select, list, empty) {
    const keep = select.value;
    select.replaceChildren(...list.map((m) => el('option', { value: m.name, textContent: `${m.name} (${(m.parameters / 1e6).toFixed(2)}M)` })));
    if (!list.length) select.append(el('option', { value: '', textContent: empty }));
    if (list.some((m) => m.name === keep)) select.value = keep;
  }

  async function loadModels() {
    try {
      models = (await api('/models')).models;
    } catch (e) { fail(e); return; }
    fill($('gen-model'), models.filter((m) => m.kind === 'text'), 'no text model');
    fill($('rec-model'), models.filter((m) => m.kind === 'recall'), 'no recall model');
    document.body.dataset.models = models.map((m) => m.name).join(' ');
  }

  // ---- playground: POST /generate, stream: true (SSE) ----------------------------
  let genCtl = null;

  async function generate(ev) {
    ev.preventDefault();
    if (genCtl) return;
    const body = { model: $('gen-model').value, prompt: $('gen-prompt').value, stream: true,
      max_tokens: num('gen-max'), temperature: num('gen-temp') };
    const topk = num('gen-topk'), topp = num('gen-topp'), seed = num('gen-seed');
    if (topk) body.top_k = topk;
    if (topp !== undefined && topp < 1) body.top_p = topp;
    if (seed !== undefined) body.seed = seed;
    $('gen-out-prompt').textContent = body.prompt;
    $('gen-text').textContent = '';
    for (const id of ['gen-ttft', 'gen-tps', 'gen-ntok', 'gen-finish']) $(id).textContent = '–';
    $('gen-out').dataset.state = 'running';
    notice('');
    genCtl = new AbortController();
    $('gen-go').disabled = true;
    $('gen-stop').disabled = false;
    const t0 = performance.now();
    let tFirst = null, tLast = null, n = 0, finish = null;
    const show = () => {
      $('gen-ntok').textContent = String(n);
      if (tFirst !== null) $('gen-ttft').textContent = `${fmt(tFirst - t0)} ms`;
      if (n > 1) $('gen-tps').textContent = fmt((n - 1) / ((tLast - tFirst) / 1000));
    };
    const handle = (block) => {
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data || data === '[DONE]') return;
      const obj = JSON.parse(data);
      if (obj.error) throw new Error(typeof obj.error === 'string' ? obj.error : obj.error.message);
      if ('token' in obj) {
        const now = performance.now();
        if (tFirst === null) tFirst = now;
        tLast = now;
        n++;
      }
      if (obj.text) $('gen-text').textContent += obj.text;
      if (obj.finish_reason) finish = obj.finish_reason;
      show();
    };
    try {
      const r = await fetch('/generate', { method: 'POST', headers: headers(true), body: JSON.stringify(body), signal: genCtl.signal });
      if (!r.ok) throw errorOf(r.status, await r.text());
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r/g, '');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          handle(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
      if (buf.trim()) handle(buf);
    } catch (e) {
      if (e.name === 'AbortError') finish = 'stopped';
      else fail(e);
    }
    $('gen-finish').textContent = finish || '–';
    $('gen-out').dataset.state = 'done';
    genCtl = null;
    $('gen-go').disabled = false;
    $('gen-stop').disabled = true;
  }

  // ---- recall: POST /recall --------------------------------------------------
  const LECTURE = { pairs: 'A 1\nB 2\nC 3\nA 4', queries: 'A C D' };

  function parsePairs(text) {
    const pairs = [];
    text.split('\n').forEach((line, i) => {
      const t = line.trim().split(/[\s,:=]+/).filter(Boolean);
      if (!t.length) return;
      if (t.length !== 2) throw new Error(`pairs, line ${i + 1}: expected "key value", got "${line.trim()}"`);
      pairs.push(t);
    });
    return pairs;
  }

  const engine = () => document.querySelector('input[name="rec-engine"]:checked').value;

  function randomStore() {
    const n = Math.max(1, num('rec-n') || 6);
    const rnd = (k) => Math.floor(Math.random() * k);
    let pairs, queries;
    if (engine() === 'model') {
      const m = models.find((x) => x.name === $('rec-model').value);
      const rc = m && m.recall ? m.recall : { n_pairs: 8, n_keys: 64, n_values: 64 };
      const keys = [...Array(rc.n_keys).keys()].sort(() => Math.random() - 0.5).slice(0, Math.min(n, rc.n_pairs) + 1);
      const absent = keys.pop();
      pairs = keys.map((k) => [k, rnd(rc.n_values)]);
      queries = [...keys.slice(0, 3), absent];
    } else {
      const syms = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'.split('');
      const keys = syms.sort(() => Math.random() - 0.5).slice(0, Math.min(n, 25) + 1);
      const absent = keys.pop();
      pairs = keys.map((k) => [k, rnd(100)]);
      pairs.push([keys[0], rnd(100)]); // an overwrite: the latest value wins
      queries = [keys[0], keys[keys.length - 1], absent];
    }
    $('rec-pairs').value = pairs.map((p) => p.join(' ')).join('\n');
    $('rec-queries').value = queries.join(' ');
  }

  async function recall(ev) {
    if (ev) ev.preventDefault();
    notice('');
    const eng = engine();
    let pairs, queries;
    try {
      pairs = parsePairs($('rec-pairs').value);
      queries = $('rec-queries').value.trim().split(/[\s,]+/).filter(Boolean);
    } catch (e) { fail(e); return; }
    if (eng === 'model') {
      const int = (s) => (/^\d+$/.test(String(s)) ? Number(s) : s);
      pairs = pairs.map(([k, v]) => [int(k), int(v)]);
      queries = queries.map(int);
    }
    const body = { engine: eng, pairs, queries };
    if (eng === 'exact') body.explain = true;
    else if ($('rec-model').value) body.model = $('rec-model').value;
    let res;
    try { res = await api('/recall', { method: 'POST', body }); } catch (e) { fail(e); return; }
    $('rec-col3').textContent = eng === 'exact' ? 'attended pair (weight)' : 'probability';
    const tb = $('rec-answers').tBodies[0];
    tb.replaceChildren(...res.answers.map((a) => {
      const val = a.value === null ? el('span', { class: 'null', textContent: '⊥' }) : String(a.value);
      let third;
      if (eng === 'exact') {
        const at = a.attention[0];
        third = at.position < 0 ? `∅ null key (${at.weight})` : `#${at.position}: ${pairs[at.position].join(' → ')} (${at.weight})`;
      } else {
        const p = a.probability;
        third = el('span', {}, el('span', { class: 'bar', data: { p: String(p) } }), `${(p * 100).toFixed(1)}%`);
        third.firstChild.style.width = `${Math.round(p * 80)}px`;
      }
      return el('tr', {}, el('td', { textContent: String(a.query) }), el('td', {}, val), el('td', {}, third));
    }));
    $('rec-timing').textContent = `${res.usage.tokens} tokens, ${res.timings.total_ms.toFixed(3)} ms` +
      (res.timings.attention_ms !== undefined ? ` (attention ${res.timings.attention_ms.toFixed(3)} ms)` : '');
    $('rec-explain').hidden = eng !== 'exact';
    if (eng === 'exact') drawExplain(pairs, queries, res.answers);
  }

  // The lecture's picture: X one-hot and A = Q·Kᵀ with the null key and the
  // position bias (include/tfm/recall.h): score(q, j) = match(q, k_j) +
  // j/(2n), score(q, ∅) = ½, in units of β.  The marked cell is the server's
  // answer (explain); the page's own argmax must agree.
  const MAX_DRAW_PAIRS = 48, MAX_DRAW_QUERIES = 24;

  function heatColor(x) { // 0 … 1.5 → light to hot
    const t = Math.max(0, Math.min(1, x / 1.5));
    return `rgba(217, 72, 15, ${(0.08 + 0.82 * t).toFixed(3)})`;
  }

  function drawExplain(pairs, queries, answers) {
    const n = pairs.length;
    const np = Math.min(n, MAX_DRAW_PAIRS), nq = Math.min(queries.length, MAX_DRAW_QUERIES);
    const lastOf = new Map();
    pairs.forEach(([k], j) => lastOf.set(String(k), j));
    const heat = $('rec-heat');
    const head = el('tr', {}, el('th', { scope: 'col', textContent: 'q \\ k' }),
      el('th', { scope: 'col', class: 'null-key', textContent: '∅ (⊥)' }));
    for (let j = 0; j < np; j++) {
      const over = lastOf.get(String(pairs[j][0])) !== j;
      head.append(el('th', { scope: 'col', class: over ? 'overwritten' : '', title: over ? 'overwritten by a later pair' : '',
        textContent: `${pairs[j][0]}→${pairs[j][1]}` }));
    }
    head.append(el('th', { scope: 'col', textContent: 'answer' }));
    const rows = [];
    let disagree = 0;
    for (let i = 0; i < nq; i++) {
      const q = String(queries[i]);
      const scores = [0.5, ...pairs.map(([k], j) => (String(k) === q ? 1 : 0) + j / (2 * n))];
      let best = 0;
      scores.forEach((s, c) => { if (s > scores[best]) best = c; });
      const pos = answers[i].attention[0].position;
      const win = pos + 1; // column 0 is the null key
      if (win !== best) disagree++;
      const tr = el('tr', {}, el('th', { scope: 'row', textContent: q }));
      for (let c = 0; c <= np; c++) {
        const td = el('td', {
          class: `${c === 0 ? 'null-key' : ''}${c === win ? ' win' : ''}`,
          textContent: scores[c].toFixed(3),
          data: { score: String(scores[c]), col: String(c - 1) },
          title: c === win ? `winner: weight ${answers[i].attention[0].weight}` : '',
        });
        if (c === win) td.dataset.weight = String(answers[i].attention[0].weight);
        td.style.background = heatColor(scores[c]);
        tr.append(td);
      }
      const a = answers[i].value;
      tr.append(el('td', {}, a === null ? el('span', { class: 'null', textContent: '⊥' }) : String(a)));
      rows.push(tr);
    }
    heat.replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
    if (disagree) notice(`${disagree} queries: the page's argmax differs from the server's answer`, 'error');
    else if (n > np || queries.length > nq) notice(`drawing the first ${np} pairs and ${nq} queries`);

    // X: the sequence k1 v1 … kn vn, then the queries; one column per key
    // symbol and per value symbol (separate spaces, as the engine has them)
    const ks = [...new Set(pairs.slice(0, np).map((p) => String(p[0])).concat(queries.slice(0, nq).map(String)))];
    const vs = [...new Set(pairs.slice(0, np).map((p) => String(p[1])))];
    const xh = el('tr', {}, el('th', { scope: 'col', textContent: 'token' }),
      ...ks.map((k) => el('th', { scope: 'col', textContent: `k:${k}` })),
      ...vs.map((v) => el('th', { scope: 'col', textContent: `v:${v}` })));
    const xrows = [];
    const xrow = (label, kind, sym, cls) => {
      const tr = el('tr', { class: cls }, el('th', { scope: 'row', textContent: label }));
      for (const k of ks) tr.append(el('td', { textContent: kind === 'k' && k === sym ? '1' : '' }));
      for (const v of vs) tr.append(el('td', { textContent: kind === 'v' && v === sym ? '1' : '' }));
      for (const td of tr.querySelectorAll('td')) if (td.textContent) td.style.background = heatColor(1.5);
      xrows.push(tr);
    };
    pairs.slice(0, np).forEach(([k, v], j) => {
      xrow(`k${j + 1}`, 'k', String(k), '');
      xrow(`v${j + 1}`, 'v', String(v), '');
    });
    queries.slice(0, nq).forEach((q, i) => xrow(`q${i + 1}`, 'k', String(q), 'query'));
    $('rec-x').replaceChildren(el('thead', {}, xh), el('tbody', {}, ...xrows));
  }

  // ---- training: POST /train, GET /train[/{id}], DELETE /train/{id} ------------
  const PRESETS = {
    quick: { task: 'recall', dim: 64, layers: 2, heads: 2, steps: 50, lr: 1e-3, batch: 64, seq: 64,
      extra: { recall: { min_pairs: 1 } } },
    mqar8: { task: 'recall', dim: 64, layers: 2, heads: 2, steps: 2000, lr: 1e-3, batch: 64, seq: 64,
      extra: { model: { hidden_dim: 256 }, warmup_steps: 100, min_lr_ratio: 0.1, weight_decay: 0.1, grad_clip: 1,
        eval_every: 250, eval_sequences: 2000, recall: { min_pairs: 1 } } },
    kjv: { task: 'text', dim: 128, layers: 4, heads: 4, steps: 3000, lr: 2e-3, batch: 16, seq: 256,
      extra: { model: { hidden_dim: 512 }, warmup_steps: 100, min_lr_ratio: 0.1, weight_decay: 0.1, grad_clip: 1,
        eval_every: 500, eval_sequences: 400, text: { eval_fraction: 0.05 } } },
  };
  let preset = PRESETS.quick;

  function applyPreset() {
    preset = PRESETS[$('tr-preset').value];
    const p = preset;
    $('tr-task').value = p.task;
    $('tr-name').value = `console-${Date.now().toString(36)}`;
    for (const [id, v] of [['tr-dim', p.dim], ['tr-layers', p.layers], ['tr-heads', p.heads], ['tr-steps', p.steps],
      ['tr-lr', p.lr], ['tr-batch', p.batch], ['tr-seq', p.seq]]) $(id).value = v;
    taskChanged();
  }

  function taskChanged() {
    const text = $('tr-task').value === 'text';
    $('tr-recall-opts').hidden = text;
    $('tr-text-opts').hidden = !text;
  }

  async function startJob(ev) {
    ev.preventDefault();
    notice('');
    const task = $('tr-task').value;
    const ex = structuredClone(preset.task === task ? preset.extra : {});
    const body = { ...ex, task, name: $('tr-name').value.trim(),
      model: { ...(ex.model || {}), dim: num('tr-dim'), n_layers: num('tr-layers'), n_heads: num('tr-heads') },
      steps: num('tr-steps'), learning_rate: num('tr-lr'), batch_size: num('tr-batch'), seq_len: num('tr-seq') };
    if (body.eval_every && body.eval_every > body.steps) delete body.eval_every;
    if (body.warmup_steps && body.warmup_steps > body.steps) body.warmup_steps = Math.floor(body.steps / 10);
    if (task === 'recall') {
      body.recall = { ...(ex.recall || {}), n_pairs: num('tr-pairs'), n_keys: num('tr-keys'), n_values: num('tr-values'),
        absent_fraction: num('tr-absent') };
      delete body.text;
    } else {
      body.text = { ...(ex.text || {}) };
      const inline = $('tr-inline').value;
      if (inline.trim()) body.text.text = inline; else body.text.corpus = $('tr-corpus').value.trim();
      delete body.recall;
    }
    try {
      const r = await api('/train', { method: 'POST', body });
      $('tr-name').value = `console-${Date.now().toString(36)}`;
      selectJob(r.id);
      listJobs();
    } catch (e) { fail(e); }
  }

  let jobsTimer = null, jobTimer = null, selected = null, evals = new Map(), lossChart = null, seenDone = new Set();

  async function listJobs() {
    let jobs;
    try { jobs = (await api('/train')).jobs; } catch (e) { fail(e); return; }
    const tb = $('tr-jobs').tBodies[0];
    tb.replaceChildren(...jobs.map((j) => {
      const active = j.status === 'queued' || j.status === 'running';
      const cancel = active ? el('button', { type: 'button', textContent: 'Cancel', 'aria-label': `Cancel ${j.id}` }) : null;
      if (cancel) cancel.addEventListener('click', (e) => { e.stopPropagation(); cancelJob(j.id); });
      const view = el('button', { type: 'button', textContent: 'Show', 'aria-label': `Show ${j.id}` });
      view.addEventListener('click', () => selectJob(j.id));
      return el('tr', { class: j.id === selected ? 'selected' : '', data: { id: j.id, status: j.status } },
        el('td', { textContent: j.id }), el('td', { textContent: j.name }),
        el('td', { class: `status-${j.status}`, textContent: j.status }),
        el('td', { textContent: `${j.step}/${j.steps}` }), el('td', { textContent: fmt(j.loss, 4) }),
        el('td', {}, view, cancel));
    }));
    for (const j of jobs) {
      if (j.status === 'succeeded' && !seenDone.has(j.id)) {
        seenDone.add(j.id);
        if (!models.some((m) => m.name === j.model)) loadModels();
      }
    }
  }

  async function cancelJob(id) {
    try { await api(`/train/${id}`, { method: 'DELETE' }); } catch (e) { fail(e); }
    listJobs();
    if (id === selected) pollJob();
  }

  function selectJob(id) {
    selected = id;
    evals = new Map();
    clearTimeout(jobTimer);
    pollJob();
  }

  function ensureLossChart() {
    if (lossChart || typeof uPlot === 'undefined') return lossChart;
    const box = $('tr-chart');
    lossChart = new uPlot({
      width: Math.max(300, box.clientWidth), height: 260,
      scales: { x: { time: false }, acc: { range: [0, 1] } },
      axes: [{ label: 'step' }, { label: 'loss' }, { scale: 'acc', side: 1, label: 'eval accuracy', grid: { show: false } }],
      series: [{ label: 'step' }, { label: 'loss', stroke: '#2a6fdb', width: 1.5 },
        { label: 'eval accuracy', scale: 'acc', stroke: '#2b8a3e', width: 2, spanGaps: true, points: { show: true, size: 7 } }],
    }, [[], [], []], box);
    return lossChart;
  }

  async function pollJob() {
    if (!selected || current !== 'training') return;
    const id = selected;
    let j;
    try { j = await api(`/train/${id}`); } catch (e) { fail(e); return; }
    if (id !== selected) return;
    $('tr-title').textContent = `Loss: ${j.name} (${j.id})`;
    $('tr-step').textContent = `${j.step}/${j.steps}`;
    $('tr-loss').textContent = fmt(j.loss, 4);
    $('tr-status').textContent = j.status + (j.error ? `: ${j.error}` : '');
    $('tr-tps').textContent = j.tokens_per_s ? Math.round(j.tokens_per_s).toLocaleString('en') : '–';
    if (j.eval) {
      const acc = j.eval.accuracy !== undefined ? j.eval.accuracy : null;
      if (acc !== null) evals.set(j.eval.step, acc);
      $('tr-acc').textContent = acc !== null ? `${(acc * 100).toFixed(1)}%` : `loss ${fmt(j.eval.loss, 3)}`;
    }
    const hist = j.loss_history || [];
    const xs = [...new Set([...hist.map((p) => p[0]), ...evals.keys()])].sort((a, b) => a - b);
    const lossAt = new Map(hist.map((p) => [p[0], p[1]]));
    const data = [xs, xs.map((x) => (lossAt.has(x) ? lossAt.get(x) : null)), xs.map((x) => (evals.has(x) ? evals.get(x) : null))];
    const chart = ensureLossChart();
    if (chart) chart.setData(data);
    $('tr-chart').dataset.points = String(hist.length);
    $('tr-chart').dataset.status = j.status;
    if (j.status === 'queued' || j.status === 'running') jobTimer = setTimeout(pollJob, 400);
    else if (j.status === 'succeeded' && !models.some((m) => m.name === j.model)) { loadModels(); listJobs(); }
  }

  onShow.training = () => {
    listJobs();
    jobsTimer = setInterval(listJobs, 2000);
    if (selected) pollJob();
  };
  onHide.training = () => { clearInterval(jobsTimer); clearTimeout(jobTimer); };

  // ---- cost: GET /metrics ---------------------------------------------------------
  function parseProm(text) {
    const out = [];
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) for (const kv of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  // least squares of log y on log x: the exponent k in y ~ x^k
  function fitExponent(pts) {
    if (pts.length < 2) return NaN;
    const lx = pts.map((p) => Math.log(p[0])), ly = pts.map((p) => Math.log(p[1]));
    const mx = lx.reduce((a, b) => a + b) / lx.length, my = ly.reduce((a, b) => a + b) / ly.length;
    let sxy = 0, sxx = 0;
    lx.forEach((x, i) => { sxy += (x - mx) * (ly[i] - my); sxx += (x - mx) ** 2; });
    return sxx > 0 ? sxy / sxx : NaN;
  }

  const KERNELS = ['naive', 'tiled', 'exact'];
  const COLORS = { naive: '#2a6fdb', tiled: '#2b8a3e', exact: '#ae3ec9' };
  let costChart = null, liveChart = null, costTimer = null, prev = null, sweepBase = null, sweepModel = '';
  const attnKey = (m) => `${m.name}|${m.labels.phase}|${m.labels.kernel}|${m.labels.context_max}`;
  const live = [[], [], []];

  function makeCostChart() {
    const box = $('cost-chart');
    return new uPlot({
      width: Math.max(320, box.clientWidth), height: 320,
      scales: { x: { time: false, distr: 3, log: 2 }, y: { distr: 3 } },
      axes: [{ label: 'context length N (bucket)' }, { label: 'attention seconds per call', size: 70,
        values: (u, vals) => vals.map((v) => (v === null ? '' : v.toExponential(0))) }],
      series: [{ label: 'N' },
        ...KERNELS.map((k) => ({ label: k, stroke: COLORS[k], paths: () => null, points: { show: true, size: 9, fill: COLORS[k] } })),
        { label: 'slope 2', stroke: '#868e96', dash: [6, 4], width: 1, spanGaps: true, points: { show: false } },
        { label: 'fit', stroke: '#d9480f', width: 1, spanGaps: true, points: { show: false } }],
    }, [[], [], [], [], [], []], box);
  }

  function makeLiveChart() {
    const box = $('live-chart');
    return new uPlot({
      width: Math.max(280, box.clientWidth), height: 180,
      scales: { x: { time: true }, ms: {} },
      axes: [{}, { label: 'req/s' }, { scale: 'ms', side: 1, label: 'p50 ms', grid: { show: false } }],
      series: [{}, { label: 'req/s', stroke: '#2a6fdb' }, { label: 'p50 ms', scale: 'ms', stroke: '#d9480f', spanGaps: true }],
    }, live, box);
  }

  // the median from two cumulative histograms' bucket deltas
  function p50(buckets) {
    const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (total <= 0) return null;
    let lo = 0, below = 0;
    for (const [le, c] of buckets) {
      if (c >= total / 2) {
        if (!isFinite(le)) return lo;
        const inb = c - below;
        return inb > 0 ? lo + (le - lo) * ((total / 2 - below) / inb) : le;
      }
      lo = le; below = c;
    }
    return null;
  }

  async function pollCost() {
    let text;
    try {
      const r = await fetch('/metrics', { headers: headers(false) });
      text = await r.text();
      if (!r.ok) throw errorOf(r.status, text);
    } catch (e) { fail(e); return; }
    const ms = parseProm(text);
    const phase = $('cost-phase').value;
    // attention per call by context bucket: since the start, or since the
    // last sweep began (its own prompts on one model only)
    const per = {};
    for (const k of KERNELS) per[k] = new Map();
    const sec = new Map();
    const since = (m) => m.value - (sweepBase ? sweepBase.get(attnKey(m)) || 0 : 0);
    for (const m of ms) {
      if (m.labels.phase !== phase || !KERNELS.includes(m.labels.kernel)) continue;
      const key = `${m.labels.kernel}|${m.labels.context_max}`;
      if (m.name === 'attnd_attention_seconds_total') sec.set(key, since(m));
    }
    for (const m of ms) {
      const calls = m.name === 'attnd_attention_calls_total' && m.labels.phase === phase ? since(m) : 0;
      if (!(calls > 0)) continue;
      const s = sec.get(`${m.labels.kernel}|${m.labels.context_max}`);
      const n = Number(m.labels.context_max);
      if (s > 0 && n > 0 && per[m.labels.kernel]) per[m.labels.kernel].set(n, s / calls);
    }
    const xs = [...new Set(KERNELS.flatMap((k) => [...per[k].keys()]))].sort((a, b) => a - b);
    // the kernel with the most points carries the fit and the reference line
    const main = KERNELS.reduce((a, b) => (per[b].size > per[a].size ? b : a));
    const pts = [...per[main].entries()];
    const k = fitExponent(pts);
    let ref = xs.map(() => null), fit = xs.map(() => null);
    if (pts.length) {
      const gx = Math.exp(pts.reduce((a, p) => a + Math.log(p[0]), 0) / pts.length);
      const gy = Math.exp(pts.reduce((a, p) => a + Math.log(p[1]), 0) / pts.length);
      ref = xs.map((x) => gy * (x / gx) ** 2);
      if (isFinite(k)) fit = xs.map((x) => gy * (x / gx) ** k);
    }
    const server = ms.find((m) => m.name === 'attnd_attention_cost_exponent');
    const npoints = KERNELS.reduce((a, kk) => a + per[kk].size, 0);
    $('cost-fit').textContent = `${sweepBase ? `the sweep on ${sweepModel}` : 'since start'}, ${phase} ${main}: fitted exponent ${isFinite(k) ? k.toFixed(2) : '– (needs two buckets)'}` +
      ` · attnd_attention_cost_exponent ${server && isFinite(server.value) ? server.value.toFixed(2) : 'NaN'}`;
    if (!costChart && typeof uPlot !== 'undefined') costChart = makeCostChart();
    if (costChart) costChart.setData([xs, ...KERNELS.map((kk) => xs.map((x) => (per[kk].has(x) ? per[kk].get(x) : null))), ref, fit]);
    $('cost-chart').dataset.points = String(npoints);
    $('cost-chart').dataset.exponent = isFinite(k) ? k.toFixed(4) : '';

    // op classes, all phases
    const flops = {}, secs = {};
    for (const m of ms) {
      const c = m.labels.class;
      if (m.name === 'attnd_op_flops_total') flops[c] = (flops[c] || 0) + m.value;
      if (m.name === 'attnd_op_seconds_total') secs[c] = (secs[c] || 0) + m.value;
    }
    const tf = Object.values(flops).reduce((a, b) => a + b, 0), ts = Object.values(secs).reduce((a, b) => a + b, 0);
    for (const tr of $('cost-ops').tBodies[0].rows) {
      const c = tr.dataset.class;
      tr.cells[1].textContent = tf > 0 ? ((100 * (flops[c] || 0)) / tf).toFixed(2) : '–';
      tr.cells[2].textContent = ts > 0 ? ((100 * (secs[c] || 0)) / ts).toFixed(1) : '–';
    }

    // live: requests (not the console's own /metrics reads), p50, queue
    const now = Date.now() / 1000;
    let reqs = 0;
    const bk = new Map();
    for (const m of ms) {
      if (m.labels.route === '/metrics') continue;
      if (m.name === 'attnd_requests_total') reqs += m.value;
      if (m.name === 'attnd_request_duration_seconds_bucket') {
        const le = m.labels.le === '+Inf' ? Infinity : Number(m.labels.le);
        bk.set(le, (bk.get(le) || 0) + m.value);
      }
    }
    const gauge = (name) => { const g = ms.find((m) => m.name === name); return g ? g.value : null; };
    $('live-queue').textContent = String(gauge('attnd_queue_depth') ?? '–');
    $('live-inflight').textContent = String(gauge('attnd_requests_in_flight') ?? '–');
    if (prev) {
      const dt = now - prev.t;
      const rate = (reqs - prev.reqs) / dt;
      const d = [...bk.entries()].sort((a, b) => a[0] - b[0]).map(([le, c]) => [le, c - (prev.bk.get(le) || 0)]);
      const med = p50(d);
      $('live-rate').textContent = fmt(rate, 2);
      $('live-p50').textContent = med === null ? '–' : `${fmt(med * 1000, 2)} ms`;
      live[0].push(now); live[1].push(rate); live[2].push(med === null ? null : med * 1000);
      if (live[0].length > 90) for (const s of live) s.shift();
      // from two points on: one point would make uPlot span years
      if (!liveChart && live[0].length >= 2 && typeof uPlot !== 'undefined') liveChart = makeLiveChart();
      if (liveChart) liveChart.setData(live);
    }
    prev = { t: now, reqs, bk };
  }

  // prompts of growing length, so that the plot has several buckets: on the
  // text model with the longest context, up to 1024 tokens
  async function sweep() {
    const m = models.filter((x) => x.kind === 'text').sort((a, b) => b.config.seq_len - a.config.seq_len)[0];
    if (!m) { notice('no text model to run prompts on', 'error'); return; }
    const btn = $('cost-sweep');
    btn.disabled = true;
    const top = Math.min(1024, m.config.seq_len - 8);
    try {
      // the counters now: the plot then shows what the sweep added
      const r = await fetch('/metrics', { headers: headers(false) });
      if (!r.ok) throw errorOf(r.status, await r.text());
      const base = new Map();
      for (const x of parseProm(await r.text())) if (x.name.startsWith('attnd_attention_')) base.set(attnKey(x), x.value);
      sweepBase = base;
      sweepModel = m.name;
      $('cost-phase').value = 'prefill';
      for (let len = 16; len <= top; len *= 2) {
        for (let i = 0; i < 3; i++) {
          await api('/generate', { method: 'POST', body: { model: m.name, prompt: 'x'.repeat(len - 1), max_tokens: 1, temperature: 0 } });
        }
      }
      if (top % 16) await api('/generate', { method: 'POST', body: { model: m.name, prompt: 'x'.repeat(top - 1), max_tokens: 1, temperature: 0 } });
    } catch (e) { fail(e); }
    btn.disabled = false;
    pollCost();
  }

  onShow.cost = () => { prev = null; pollCost(); costTimer = setInterval(pollCost, 2000); };
  onHide.cost = () => clearInterval(costTimer);

  // ---- start ---------------------------------------------------------------------
  function resize() {
    for (const [chart, id, h] of [[lossChart, 'tr-chart', 260], [costChart, 'cost-chart', 320], [liveChart, 'live-chart', 180]]) {
      if (chart && $(id).clientWidth) chart.setSize({ width: $(id).clientWidth, height: h });
    }
  }

  function init() {
    $('api-key').value = apiKey;
    $('key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      apiKey = $('api-key').value.trim();
      if (apiKey) sessionStorage.setItem(KEY, apiKey); else sessionStorage.removeItem(KEY);
      notice('');
      loadModels();
      if (onShow[current]) { if (onHide[current]) onHide[current](); onShow[current](); }
    });
    $('gen-form').addEventListener('submit', generate);
    $('gen-stop').addEventListener('click', () => genCtl && genCtl.abort());
    $('rec-form').addEventListener('submit', recall);
    $('rec-lecture').addEventListener('click', () => {
      $('rec-pairs').value = LECTURE.pairs;
      $('rec-queries').value = LECTURE.queries;
      document.querySelector('input[name="rec-engine"][value="exact"]').checked = true;
      recall();
    });
    $('rec-random').addEventListener('click', randomStore);
    $('rec-pairs').value = LECTURE.pairs;
    $('rec-queries').value = LECTURE.queries;
    $('tr-preset').addEventListener('change', applyPreset);
    $('tr-task').addEventListener('change', taskChanged);
    $('tr-form').addEventListener('submit', startJob);
    applyPreset();
    $('cost-sweep').addEventListener('click', sweep);
    $('cost-phase').addEventListener('change', pollCost);
    window.addEventListener('hashchange', route);
    window.addEventListener('resize', resize);
    route();
    loadModels();
  }

  init();
})();
