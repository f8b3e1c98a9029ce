// attnd.mjs — the client tests' one piece of machinery: a real attnd on an
// ephemeral port of 127.0.0.1, serving small random models made by
// `attn random` in a temporary directory (as tests/server/harness.py does).
//
//   const srv = await startAttnd({ apiKey: 'k' });  // srv.url, srv.port
//   ...
//   await srv.stop();                                // SIGTERM, its exit code
//
// The binaries come from the environment (ctest sets them):
// ATTND=path/to/attnd ATTN=path/to/attn, else build/ at the repository
// root. attnd runs under `setpriv --pdeathsig TERM` so that it dies with
// the test process even when that is killed (a ctest timeout's SIGKILL);
// stop() and the exit hook only ever signal the process started here.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
// attnd runs in a directory of its own: relative paths are made absolute here
export const ATTND = resolve(process.env.ATTND || join(REPO, 'build', 'attnd'));
export const ATTN = resolve(process.env.ATTN || join(REPO, 'build', 'attn'));

const LISTEN_RE = /^attnd: listening on http:\/\/([0-9.]+|\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d+)\s*$/;
const START_TIMEOUT_MS = 30000;

// tiny: harness.py's TINY (tied head: greedy repeats the prompt's last
// byte); untied: the same shape with an untied head, whose distribution is
// flat enough that sampled choices differ.
const TINY = ['--dim', '64', '--hidden', '128', '--layers', '2', '--heads', '4', '--kv-heads', '2',
  '--vocab', '258', '--seq-len', '256'];
const MODELS = [['tiny', 1, []], ['untied', 5, ['--untied']]];

let modelsDir = null;
const running = new Set();

function makeModels() {
  if (modelsDir) return modelsDir;
  if (!existsSync(ATTN)) throw new Error(`attn not found at ${ATTN} (set ATTN, or build it)`);
  const dir = mkdtempSync(join(tmpdir(), 'attnd-clients-'));
  for (const [name, seed, extra] of MODELS) {
    execFileSync(ATTN, ['random', '--out', join(dir, `${name}.safetensors`), ...TINY,
      '--seed', String(seed), ...extra], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120000 });
  }
  modelsDir = dir;
  return dir;
}

process.on('exit', () => {
  for (const s of running) {
    try { s.proc.kill('SIGKILL'); } catch { /* gone already */ }
  }
  if (modelsDir) rmSync(modelsDir, { recursive: true, force: true });
});

/** Starts attnd (extra flags in opts.args, --api-key opts.apiKey, the
 * models of opts.modelsDir instead of the random ones); resolves
 * once it printed its listening line and GET /readyz answered 200. */
export async function startAttnd(opts = {}) {
  if (!existsSync(ATTND)) throw new Error(`attnd not found at ${ATTND} (set ATTND, or build it)`);
  const models = opts.modelsDir ? resolve(opts.modelsDir) : makeModels();
  const work = mkdtempSync(join(tmpdir(), 'attnd-clients-srv-'));
  const args = ['--host', '127.0.0.1', '--port', '0', '--models-dir', models,
    '--data-dir', join(work, 'data'), '--threads', '2', '--grace-seconds', '3', ...(opts.args || [])];
  if (opts.apiKey) args.push('--api-key', opts.apiKey);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ATTND_')));
  const proc = spawn('setpriv', ['--pdeathsig', 'TERM', '--', ATTND, ...args],
    { cwd: work, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const srv = { proc, work, output: [], exited: null };
  running.add(srv);
  srv.exit = new Promise((res) => proc.on('exit', (code, sig) => { srv.exited = { code, sig }; running.delete(srv); res(srv.exited); }));
  const keep = (buf) => {
    for (const ln of buf.toString('utf8').split('\n')) if (ln) srv.output.push(ln);
    if (srv.output.length > 400) srv.output.splice(0, srv.output.length - 400);
  };
  proc.stderr.on('data', keep);
  const port = await new Promise((res, rej) => {
    let pending = '';
    const timer = setTimeout(() => rej(new Error(`no listening line within ${START_TIMEOUT_MS} ms\n${tail(srv)}`)),
      START_TIMEOUT_MS);
    proc.stdout.on('data', (buf) => {
      keep(buf);
      pending += buf.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const ln of lines) {
        const m = LISTEN_RE.exec(ln);
        if (m) { clearTimeout(timer); res(Number(m[2])); }
      }
    });
    srv.exit.then((e) => { clearTimeout(timer); rej(new Error(`attnd exited (${JSON.stringify(e)}) before listening\n${tail(srv)}`)); });
  });
  srv.port = port;
  srv.url = `http://127.0.0.1:${port}`;
  srv.stop = () => stopAttnd(srv);
  const headers = opts.apiKey ? { Authorization: `Bearer ${opts.apiKey}` } : {};
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    try {
      const r = await fetch(`${srv.url}/readyz`, { headers });
      if (r.status === 200) break;
    } catch { /* not yet */ }
    if (srv.exited) throw new Error(`attnd exited while waiting for /readyz\n${tail(srv)}`);
    if (Date.now() > deadline) throw new Error(`GET /readyz not 200 within ${START_TIMEOUT_MS} ms\n${tail(srv)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return srv;
}

/** SIGTERM, then SIGKILL after timeoutMs; resolves to {code, sig}. */
export async function stopAttnd(srv, timeoutMs = 15000) {
  if (!srv.exited) {
    srv.proc.kill('SIGTERM');
    const t = setTimeout(() => { if (!srv.exited) srv.proc.kill('SIGKILL'); }, timeoutMs);
    await srv.exit;
    clearTimeout(t);
  }
  rmSync(srv.work, { recursive: true, force: true });
  return srv.exited;
}

export function tail(srv, n = 30) {
  return `--- attnd output (last ${n} lines) ---\n` + srv.output.slice(-n).join('\n');
}

/** attnd's own POST /generate (the reference the clients' answers are compared with). */
export async function generate(srv, body) {
  const r = await fetch(`${srv.url}/generate`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  if (r.status !== 200) throw new Error(`/generate ${r.status}: ${await r.text()}`);
  return r.json();
}
