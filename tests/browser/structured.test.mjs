// Structured output and tool calls in the page, through the public JS API: a regex and a JSON
// schema on stories260K (WebGPU, where the masks are applied on the device, and the WASM CPU
// fallback), and on SmolLM2 (CPU fallback) a chat answer held to a schema and a forced tool
// call, returned as message.tool_calls and streamed as delta.tool_calls.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { browserSkipReason, openBrowser, smolLM2, startServer, stories260K, webgpuSkipReason } from './harness.mjs';

const stories = stories260K();
const smol = smolLM2();
const browserSkip = await browserSkipReason();
let server, browser;

before(async () => {
  if (browserSkip) return;
  server = await startServer();
  browser = await openBrowser(server.origin);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
}

const SCHEMA = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 6 }, legs: { type: 'integer', minimum: 0, maximum: 8 } },
  required: ['name', 'legs'],
  additionalProperties: false,
};

for (const backend of ['webgpu', 'cpu']) {
  test(`stories260K on ${backend}: a regex and a JSON schema hold the output`, { timeout: 300_000 }, async (t) => {
    let skip = browserSkip ?? stories.skip;
    if (!skip && backend === 'webgpu') skip = await webgpuSkipReason(browser.page);
    if (skip) return skipped(t, skip);
    const r = await browser.page.evaluate(
      async ({ urls, backend, schema }) => {
        const { createEngine } = await import('/js/index.js');
        const engine = await createEngine({ urls }, { backend, cache: false });
        try {
          const run = async (options) => {
            const s = engine.generate('Once upon a time', { temperature: 0, max_tokens: 120, ...options });
            let text = '';
            for await (const piece of s) text += piece;
            return { text, usage: await s.usage };
          };
          const regex = await run({ regex: '[0-9]{3}-[a-z]{2}' });
          const json = await run({ response_format: { type: 'json_schema', json_schema: { name: 'dog', schema } } });
          let error = null;
          try {
            await run({ regex: '(unclosed' });
          } catch (e) {
            error = e.message;
          }
          return { regex, json, error };
        } finally {
          await engine.unload();
        }
      },
      { urls: stories.urls, backend, schema: SCHEMA },
    );
    assert.match(r.regex.text, /^[0-9]{3}-[a-z]{2}$/);
    assert.equal(r.regex.usage.finish_reason, 'stop');
    assert.equal(r.json.usage.finish_reason, 'stop', r.json.text);
    const v = JSON.parse(r.json.text);
    assert.deepEqual(Object.keys(v).sort(), ['legs', 'name']);
    assert.ok(v.name.length <= 6 && Number.isInteger(v.legs) && v.legs >= 0 && v.legs <= 8, r.json.text);
    assert.match(r.error ?? '', /regex/);
  });
}

test('SmolLM2 on the CPU fallback: a schema-held chat answer and a forced tool call, streamed and not', { timeout: 600_000 }, async (t) => {
  const skip = browserSkip ?? smol.skip;
  if (skip) return skipped(t, skip);
  const tools = [
    { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 12 } }, required: ['city'], additionalProperties: false } } },
    { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { enum: ['UTC', 'CET'] } }, required: ['zone'], additionalProperties: false } } },
  ];
  const r = await browser.page.evaluate(
    async ({ url, tools, schema }) => {
      const { createEngine } = await import('/js/index.js');
      const engine = await createEngine({ url }, { backend: 'cpu', context: 512 });
      try {
        const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
        const answer = await engine.chat.completions.create({
          messages: [{ role: 'user', content: 'Describe a dog.' }], temperature: 0, max_tokens: 60,
          response_format: { type: 'json_schema', json_schema: { name: 'dog', schema } },
        });
        const call = await engine.chat.completions.create({ messages, tools, tool_choice: 'required', parallel_tool_calls: false, temperature: 0, max_tokens: 60 });
        const chunks = [];
        for await (const c of await engine.chat.completions.create({ messages, tools, tool_choice: 'required', parallel_tool_calls: false, temperature: 0, max_tokens: 60, stream: true })) chunks.push(c);
        return { answer, call, chunks };
      } finally {
        await engine.unload();
      }
    },
    { url: smol.url, tools, schema: SCHEMA },
  );
  assert.equal(r.answer.choices[0].finish_reason, 'stop');
  const dog = JSON.parse(r.answer.choices[0].message.content);
  assert.ok(dog.name.length <= 6 && dog.legs >= 0 && dog.legs <= 8, JSON.stringify(dog));
  const c = r.call.choices[0];
  assert.equal(c.finish_reason, 'tool_calls');
  const tc = c.message.tool_calls[0];
  assert.equal(tc.type, 'function');
  assert.ok(['get_weather', 'get_time'].includes(tc.function.name), tc.function.name);
  JSON.parse(tc.function.arguments);
  const deltas = r.chunks.flatMap((ch) => ch.choices[0].delta.tool_calls ?? []);
  assert.equal(deltas.length, 1);
  assert.equal(deltas[0].function.name, tc.function.name);
  assert.equal(deltas[0].function.arguments, tc.function.arguments);
  assert.equal(r.chunks.at(-1).choices[0].finish_reason, 'tool_calls');
  console.log(`SmolLM2 in the page: ${r.answer.choices[0].message.content} / ${tc.function.name}(${tc.function.arguments})`);
});
