// The official `openai` npm client against a live attnd's /v1 routes:
// completions and chat completions (plain and streamed, a greedy stream
// equal to the unstreamed answer), n > 1, logprobs, models.list and
// retrieve, and errors surfaced as the client's own error classes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startAttnd, generate } from './attnd.mjs';

let srv;
let client;
let keyed;

before(async () => {
  srv = await startAttnd();
  keyed = await startAttnd({ apiKey: 'right-key' });
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30000 });
});

after(async () => {
  for (const s of [srv, keyed]) {
    if (s) assert.deepEqual(await s.stop(), { code: 0, sig: null }, 'attnd exits 0 on SIGTERM');
  }
});

const PROMPT = 'Once upon a time';

async function collect(stream, chat = false) {
  const texts = new Map();
  const finish = new Map();
  let usage = null;
  const ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      assert.equal(finish.get(c.index), undefined, `a chunk after choice ${c.index} finished`);
      const piece = chat ? (c.delta.content ?? '') : c.text;
      texts.set(c.index, (texts.get(c.index) ?? '') + piece);
      if (c.finish_reason) finish.set(c.index, c.finish_reason);
    }
  }
  assert.equal(ids.size, 1, 'every chunk of a stream has the same id');
  return { texts, finish, usage };
}

test('models.list and models.retrieve', async () => {
  const ids = [];
  for await (const m of client.models.list()) {
    ids.push(m.id);
    assert.equal(m.object, 'model');
    assert.equal(m.owned_by, 'attnd');
    assert.equal(typeof m.created, 'number');
  }
  assert.deepEqual(ids, ['tiny', 'untied']);
  const one = await client.models.retrieve('tiny');
  assert.equal(one.id, 'tiny');
});

test('completions.create: the text of attnd\'s own /generate for the same greedy request', async () => {
  const r = await client.completions.create({ model: 'tiny', prompt: PROMPT, max_tokens: 8, temperature: 0 });
  assert.match(r.id, /^cmpl-[0-9a-f]{32}$/);
  assert.equal(r.object, 'text_completion');
  assert.equal(r.model, 'tiny');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].finish_reason, 'length');
  const ref = await generate(srv, { model: 'tiny', prompt: PROMPT, max_tokens: 8, temperature: 0 });
  assert.equal(r.choices[0].text, ref.text);
  assert.deepEqual(r.usage, ref.usage);
});

test('completions streamed (greedy) equal the unstreamed answer, with include_usage', async () => {
  const body = { model: 'tiny', prompt: [PROMPT, 'Hello'], max_tokens: 12, temperature: 0, n: 2 };
  const plain = await client.completions.create(body);
  const stream = await client.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  const got = await collect(stream);
  assert.equal(got.texts.size, 4);
  for (const c of plain.choices) {
    assert.equal(got.texts.get(c.index), c.text, `choice ${c.index}`);
    assert.equal(got.finish.get(c.index), c.finish_reason, `choice ${c.index}`);
  }
  assert.deepEqual(got.usage, plain.usage);
});

test('completions with n > 1: greedy choices are equal, sampled ones differ and replay by seed', async () => {
  const greedy = await client.completions.create({ model: 'tiny', prompt: PROMPT, max_tokens: 6, temperature: 0, n: 3 });
  assert.deepEqual(greedy.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(new Set(greedy.choices.map((c) => c.text)).size, 1);
  const body = { model: 'untied', prompt: PROMPT, max_tokens: 24, temperature: 1, n: 4, seed: 7 };
  const a = await client.completions.create(body);
  const b = await client.completions.create(body);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text), 'same seed, same choices');
  assert.ok(new Set(a.choices.map((c) => c.text)).size > 1, 'sampled choices differ');
  assert.equal(a.usage.completion_tokens, 4 * 24);
});

test('completions logprobs: chosen token and top alternatives', async () => {
  const r = await client.completions.create({ model: 'tiny', prompt: PROMPT, max_tokens: 6, temperature: 0, logprobs: 3 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 6);
  assert.equal(lp.token_logprobs.length, 6);
  assert.equal(lp.top_logprobs.length, 6);
  assert.equal(lp.text_offset.length, 6);
  for (let i = 0; i < 6; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const alts = Object.entries(lp.top_logprobs[i]);
    assert.ok(alts.length >= 1 && alts.length <= 3);
    // greedy: the chosen token is the most likely one
    const best = Math.max(...alts.map(([, v]) => v));
    assert.ok(Math.abs(best - lp.token_logprobs[i]) < 1e-4, `step ${i}: chosen ${lp.token_logprobs[i]}, best ${best}`);
    if (i) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  }
  assert.equal(lp.text_offset[0], 0);
});

test('chat.completions.create, plain and streamed (greedy), equal', async () => {
  const body = { model: 'tiny', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello' }],
    max_tokens: 10, temperature: 0 };
  const plain = await client.chat.completions.create(body);
  assert.match(plain.id, /^chatcmpl-[0-9a-f]{32}$/);
  assert.equal(plain.object, 'chat.completion');
  assert.equal(plain.choices[0].message.role, 'assistant');
  assert.equal(typeof plain.choices[0].message.content, 'string');
  assert.equal(plain.choices[0].finish_reason, 'length');
  assert.equal(plain.usage.completion_tokens, 10);
  // the plain template, rendered as the contract says, through /generate
  const ref = await generate(srv, { model: 'tiny', prompt: 'system: Be brief.\nuser: Hello\nassistant:', max_tokens: 10, temperature: 0 });
  assert.equal(plain.choices[0].message.content, ref.text);
  const stream = await client.chat.completions.create({ ...body, stream: true });
  let first = null;
  const chunks = [];
  for await (const c of stream) { first ??= c; chunks.push(c); }
  assert.equal(first.object, 'chat.completion.chunk');
  assert.equal(first.choices[0].delta.role, 'assistant');
  async function* replay() { yield* chunks; }
  const got = await collect(replay(), true);
  assert.equal(got.texts.get(0), plain.choices[0].message.content);
  assert.equal(got.finish.get(0), 'length');
});

test('chat with n > 1 and logprobs', async () => {
  const r = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Hi' }],
    max_tokens: 5, temperature: 0, n: 2, logprobs: true, top_logprobs: 2 });
  assert.equal(r.choices.length, 2);
  assert.equal(r.choices[0].message.content, r.choices[1].message.content);
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, 5);
  for (const t of content) {
    assert.equal(typeof t.token, 'string');
    assert.ok(t.logprob <= 0);
    assert.ok(t.top_logprobs.length >= 1 && t.top_logprobs.length <= 2);
  }
});

test('errors are the client\'s own classes: NotFoundError, UnprocessableEntityError', async () => {
  await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x', max_tokens: 1 }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, `${e?.constructor?.name}: ${e?.message}`);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    assert.equal(e.param, 'model');
    assert.equal(e.type, 'not_found_error');
    return true;
  });
  await assert.rejects(client.models.retrieve('nope'), OpenAI.NotFoundError);
  await assert.rejects(client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], n: 99 }), (e) => {
    assert.ok(e instanceof OpenAI.UnprocessableEntityError, `${e?.constructor?.name}: ${e?.message}`);
    assert.equal(e.status, 422);
    assert.equal(e.param, 'n');
    assert.equal(e.type, 'invalid_request_error');
    return true;
  });
});

test('a wrong API key is an AuthenticationError; the right one works', async () => {
  const wrong = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, `${e?.constructor?.name}: ${e?.message}`);
    assert.equal(e.status, 401);
    assert.equal(e.type, 'authentication_error');
    return true;
  });
  await assert.rejects(wrong.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 1 }), OpenAI.AuthenticationError);
  const right = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'right-key', maxRetries: 0 });
  const r = await right.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 2, temperature: 0 });
  assert.equal(r.usage.completion_tokens, 2);
});
