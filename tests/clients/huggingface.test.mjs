// Hugging Face's JavaScript inference client against a live attnd, with
// endpointUrl pointing at it:
//
// * @huggingface/inference 4.x posts textGeneration to
//   `<endpointUrl>/v1/completions` ({model, prompt, max_tokens, ...the
//   parameters}) and reads choices[0].text; textGenerationStream yields the
//   completion chunks as they come (read from the installed package's
//   providers/hf-inference.js, HFInferenceTextGenerationTask).
// * @huggingface/inference 3.x (installed as huggingface-inference-3)
//   posts TGI's {inputs, parameters} to endpointUrl itself: attnd's TGI
//   compat route `POST /` (or `/generate`), and streams TGI's token events.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { InferenceClient, InferenceClientProviderApiError, textGeneration, textGenerationStream } from '@huggingface/inference';
import * as hf3 from 'huggingface-inference-3';
import { startAttnd, generate } from './attnd.mjs';

let srv;
let ref;
const PROMPT = 'Once upon a time';
const N = 10;

before(async () => {
  srv = await startAttnd();
  ref = await generate(srv, { model: 'tiny', prompt: PROMPT, max_tokens: N, temperature: 0 });
});

after(async () => {
  if (srv) assert.deepEqual(await srv.stop(), { code: 0, sig: null }, 'attnd exits 0 on SIGTERM');
});

test('4.x textGeneration with endpointUrl (/v1/completions): the greedy text', async () => {
  const out = await textGeneration({ endpointUrl: srv.url, model: 'tiny', inputs: PROMPT,
    parameters: { max_new_tokens: N, temperature: 0 } });
  assert.equal(out.generated_text, ref.text);
  const client = new InferenceClient(undefined, { endpointUrl: srv.url });
  const again = await client.textGeneration({ model: 'tiny', inputs: PROMPT, parameters: { max_new_tokens: N, temperature: 0 } });
  assert.equal(again.generated_text, ref.text);
});

test('4.x textGenerationStream with endpointUrl: the streamed text equals the unstreamed one', async () => {
  let text = '';
  let finish = null;
  for await (const chunk of textGenerationStream({ endpointUrl: srv.url, model: 'tiny', inputs: PROMPT,
    parameters: { max_new_tokens: N, temperature: 0 } })) {
    // 4.x yields the server's events as they are: OpenAI completion chunks
    for (const c of chunk.choices ?? []) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, ref.text);
  assert.equal(finish, 'length');
});

test('4.x: an unknown model is the client\'s InferenceClientProviderApiError with the 404 and OpenAI\'s error', async () => {
  await assert.rejects(textGeneration({ endpointUrl: srv.url, model: 'nope', inputs: 'x', parameters: { max_new_tokens: 1 } }),
    (e) => {
      assert.ok(e instanceof InferenceClientProviderApiError, `${e?.name}: ${e?.message}`);
      assert.equal(e.httpResponse.status, 404);
      assert.equal(e.httpResponse.body.error.code, 'model_not_found');
      return true;
    });
});

test('3.x textGeneration with endpointUrl (TGI POST /): the greedy text and details', async () => {
  const out = await hf3.textGeneration({ endpointUrl: srv.url, inputs: PROMPT,
    parameters: { max_new_tokens: N, do_sample: false, details: true } });
  assert.equal(out.generated_text, ref.text);
  assert.equal(out.details.finish_reason, 'length');
  assert.equal(out.details.generated_tokens, N);
  assert.deepEqual(out.details.tokens.map((t) => t.id), ref.tokens);
});

test('3.x textGeneration with endpointUrl .../generate (TGI /generate)', async () => {
  const out = await hf3.textGeneration({ endpointUrl: `${srv.url}/generate`, inputs: PROMPT,
    parameters: { max_new_tokens: N, do_sample: false } });
  assert.equal(out.generated_text, ref.text);
});

test('3.x textGenerationStream with endpointUrl (TGI events): equal to the unstreamed text', async () => {
  let text = '';
  let last = null;
  const ids = [];
  for await (const ev of hf3.textGenerationStream({ endpointUrl: srv.url, inputs: PROMPT,
    parameters: { max_new_tokens: N, do_sample: false } })) {
    text += ev.token.text;
    ids.push(ev.token.id);
    last = ev;
  }
  assert.deepEqual(ids, ref.tokens);
  assert.equal(text, ref.text);
  assert.equal(last.generated_text, ref.text);
  assert.equal(last.details.finish_reason, 'length');
  assert.equal(last.details.generated_tokens, N);
});

test('3.x: a TGI error reaches the client as its error with the server\'s message', async () => {
  await assert.rejects(hf3.textGeneration({ endpointUrl: srv.url, inputs: PROMPT, parameters: { max_new_tokens: 0 } }),
    (e) => {
      assert.match(String(e?.message), /max_new_tokens/, `${e?.name}: ${e?.message}`);
      return true;
    });
});
