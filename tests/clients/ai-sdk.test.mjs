// The Vercel AI SDK (`ai`) with its OpenAI-compatible provider
// (@ai-sdk/openai-compatible) against a live attnd's /v1 routes:
// generateText and streamText over the chat and the completion models, a
// greedy stream equal to the unstreamed text, and an API error.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateText, streamText, APICallError } from 'ai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { startAttnd, generate } from './attnd.mjs';

let srv;
let attnd;

before(async () => {
  srv = await startAttnd();
  attnd = createOpenAICompatible({ name: 'attnd', baseURL: `${srv.url}/v1`, includeUsage: true });
});

after(async () => {
  if (srv) assert.deepEqual(await srv.stop(), { code: 0, sig: null }, 'attnd exits 0 on SIGTERM');
});

const GREEDY = { temperature: 0, maxOutputTokens: 8, maxRetries: 0 };

test('generateText (chat model): the plain template\'s greedy continuation', async () => {
  const r = await generateText({ model: attnd.chatModel('tiny'), prompt: 'Hello', ...GREEDY });
  const ref = await generate(srv, { model: 'tiny', prompt: 'user: Hello\nassistant:', max_tokens: 8, temperature: 0 });
  assert.equal(r.text, ref.text);
  assert.equal(r.finishReason, 'length');
  assert.equal(r.usage.outputTokens, 8);
});

test('streamText (chat model) equals generateText for greedy', async () => {
  const plain = await generateText({ model: attnd.chatModel('tiny'), prompt: 'Hello', ...GREEDY });
  const s = streamText({ model: attnd.chatModel('tiny'), prompt: 'Hello', ...GREEDY });
  let text = '';
  for await (const piece of s.textStream) text += piece;
  assert.equal(text, plain.text);
  assert.equal(await s.finishReason, 'length');
  assert.equal((await s.usage).outputTokens, 8);
});

test('generateText and streamText (completion model) equal attnd\'s /generate', async () => {
  // the SDK's completion prompt: "user:\n<text>\n\nassistant:\n", stop "\nuser:"
  const ref = await generate(srv, { model: 'tiny', prompt: 'user:\nOnce upon a time\n\nassistant:\n', max_tokens: 8,
    temperature: 0, stop: ['\nuser:'] });
  const r = await generateText({ model: attnd.completionModel('tiny'), prompt: 'Once upon a time', ...GREEDY });
  assert.equal(r.text, ref.text);
  const s = streamText({ model: attnd.completionModel('tiny'), prompt: 'Once upon a time', ...GREEDY });
  let text = '';
  for await (const piece of s.textStream) text += piece;
  assert.equal(text, ref.text);
});

test('an unknown model is an APICallError with the 404', async () => {
  await assert.rejects(generateText({ model: attnd.chatModel('nope'), prompt: 'x', ...GREEDY }), (e) => {
    assert.ok(APICallError.isInstance(e), `${e?.name}: ${e?.message}`);
    assert.equal(e.statusCode, 404);
    assert.match(e.message, /nope/);
    return true;
  });
});
