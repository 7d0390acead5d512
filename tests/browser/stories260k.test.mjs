// End to end in the page, through the public JS API: stories260K, greedy from BOS, must give
// exactly the 200 reference tokens on WebGPU (SwiftShader here) and on the WASM CPU fallback.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { browserSkipReason, openBrowser, startServer, stories260K, webgpuSkipReason } from './harness.mjs';

const model = stories260K();
const skip = (await browserSkipReason()) ?? model.skip ?? null;
let server, browser;

before(async () => {
  if (skip) return;
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

/** Greedy from BOS in the page: `how` is "files" (Blobs) or "urls". */
async function greedy(backend, how) {
  return browser.page.evaluate(
    async ({ urls, backend, how }) => {
      const { createEngine } = await import('/js/index.js');
      let source = { urls };
      if (how === 'files') {
        const files = [];
        for (const url of urls) files.push({ name: url.split('/').pop(), data: await (await fetch(url)).blob() });
        source = { files };
      }
      const stages = new Set();
      const engine = await createEngine(source, { backend, onProgress: (p) => stages.add(p.stage) });
      const t0 = performance.now();
      const stream = engine.generate('', { max_tokens: 200, temperature: 0, ignore_eos: true });
      let text = '';
      let firstPieceMs = null;
      for await (const piece of stream) {
        firstPieceMs ??= performance.now() - t0;
        text += piece;
      }
      const usage = await stream.usage;
      const result = { backend: engine.backend, info: engine.info, usage, text, firstPieceMs, stages: [...stages] };
      await engine.unload();
      return result;
    },
    { urls: model.urls, backend, how },
  );
}

function check(result, label) {
  const reference = JSON.parse(readFileSync(join(model.dir, 'reference_greedy.json'), 'utf8'));
  const want = reference.greedy_token_ids;
  const got = result.usage.token_ids;
  const first = got.findIndex((t, i) => t !== want[i]);
  assert.equal(first, -1, `${label}: token ${first} is ${got[first]}, the reference has ${want[first]}`);
  assert.equal(got.length, want.length, `${label}: token count`);
  assert.equal(result.usage.prompt_tokens, 1, 'the prompt is BOS alone');
  assert.equal(result.usage.finish_reason, 'length');
  assert.equal(result.text, reference.text, `${label}: streamed text`);
  const u = result.usage;
  console.log(
    `${label}: backend ${result.backend}; 200/200 tokens match; first token ${u.prefill_ms.toFixed(1)} ms; ` +
      `decode ${u.decode_tokens_per_second.toFixed(1)} tok/s; progress stages ${result.stages.join(',')}`,
  );
}

test('stories260K greedy from BOS on WebGPU matches the reference', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const noGpu = await webgpuSkipReason(browser.page);
  if (noGpu) return skipped(t, noGpu);
  const result = await greedy('webgpu', 'files');
  assert.equal(result.info.backend.kind, 'webgpu');
  assert.notEqual(result.backend, 'cpu');
  check(result, 'webgpu');
});

test('stories260K greedy from BOS on the WASM CPU fallback matches the reference', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const result = await greedy('cpu', 'urls');
  assert.equal(result.backend, 'cpu');
  check(result, 'cpu');
});

test('interrupt stops a running generation between tokens', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const result = await browser.page.evaluate(async (urls) => {
    const { createEngine } = await import('/js/index.js');
    const engine = await createEngine({ urls }, { backend: 'cpu' });
    const stream = engine.generate('', { max_tokens: 500, temperature: 0, ignore_eos: true });
    let pieces = 0;
    for await (const _ of stream) {
      if (++pieces === 5) engine.interrupt();
    }
    const usage = await stream.usage;
    // The engine is still usable afterwards.
    const again = engine.generate('Once', { max_tokens: 3, temperature: 0 });
    for await (const _ of again);
    const againUsage = await again.usage;
    await engine.unload();
    return { usage, againUsage };
  }, model.urls);
  assert.equal(result.usage.finish_reason, 'interrupted');
  assert.ok(result.usage.completion_tokens < 500, `${result.usage.completion_tokens} tokens`);
  assert.equal(result.againUsage.completion_tokens, 3);
});

test('errors reach the page as Errors with clear messages', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const result = await browser.page.evaluate(async (urls) => {
    const { createEngine } = await import('/js/index.js');
    const out = {};
    try {
      await createEngine({ files: [{ name: 'config.json', data: new Blob(['{}']) }] }, { backend: 'cpu' });
    } catch (e) {
      out.missing = `${e instanceof Error} ${e.message}`;
    }
    const engine = await createEngine({ urls }, { backend: 'cpu' });
    try {
      await engine.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }] });
    } catch (e) {
      out.template = `${e instanceof Error} ${e.message}`;
    }
    try {
      for await (const _ of engine.generate('x', { temperature: -1 }));
    } catch (e) {
      out.param = `${e instanceof Error} ${e.message}`;
    }
    await engine.unload();
    try {
      engine.generate('x');
    } catch (e) {
      out.unloaded = `${e instanceof Error} ${e.message}`;
    }
    return out;
  }, model.urls);
  assert.match(result.missing, /^true .*tokenizer\.json is missing/);
  assert.match(result.template, /^true .*chat template/);
  assert.match(result.param, /^true .*temperature/);
  assert.match(result.unloaded, /^true .*unloaded/);
});
