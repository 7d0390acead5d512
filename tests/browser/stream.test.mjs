// Streaming loads in the page, through the public JS API: SmolLM2 (a 98 MB GGUF) from a URL
// and from a File / ArrayBuffer, on WebGPU and on the WASM CPU fallback. Tensors must reach
// the backend while the bytes still arrive, the tokens must match the reference, and on
// WebGPU the engine's wasm memory must stay below the model's size (the weights live in GPU
// buffers; on the CPU they live in wasm memory, once). A download over the storage quota fails
// with a clear message, and `{ cache: false }` then still loads.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
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

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

test('SmolLM2 streams from a URL onto WebGPU: tensors upload while bytes arrive; wasm memory stays below the model', { timeout: 300_000 }, async (t) => {
  const skip = browserSkip ?? smol.skip ?? (await webgpuSkipReason(browser.page));
  if (skip) return skipped(t, skip);
  const reference = JSON.parse(readFileSync(smol.reference, 'utf8'));
  const want = reference.greedy_ids.slice(0, 4);
  const r = await browser.page.evaluate(
    async ({ url, n }) => {
      const { createEngine } = await import('/js/index.js');
      const events = [];
      const engine = await createEngine({ url }, { backend: 'webgpu', context: 256, onProgress: (p) => events.push(p) });
      const reply = await engine.chat.completions.create({
        messages: [{ role: 'user', content: 'What is the capital of France?' }],
        max_tokens: n,
        temperature: 0,
      });
      const result = { info: engine.info, usage: reply.usage, events };
      await engine.unload();
      // 98 MB this test put in the cache; the quota test below wants it empty.
      result.deleted = await (await import('/js/index.js')).deleteCachedModel(url);
      return result;
    },
    { url: smol.url, n: want.length },
  );
  assert.equal(r.info.backend.kind, 'webgpu');
  assert.equal(r.deleted, true, 'the download was in the cache');
  assert.equal(r.usage.prompt_tokens, reference.input_ids.length, 'the chat prompt');
  assert.deepEqual(r.usage.token_ids, want, 'greedy tokens against HF transformers');
  // The download went to the browser cache whole, then was read back while tensors uploaded:
  // the first tensor went up long before the last bytes were read.
  const stages = r.events.map((e) => e.stage);
  const firstUpload = stages.indexOf('upload');
  const lastRead = r.events.findLastIndex((e) => e.stage === 'cache' && e.loaded < e.total);
  assert.ok(stages.includes('download') && firstUpload >= 0 && firstUpload < lastRead, `stages ${[...new Set(stages)]}`);
  const uploads = r.events.filter((e) => e.stage === 'upload');
  assert.deepEqual(uploads.at(-1), { stage: 'upload', loaded: 272, total: 272 });
  const wasm = r.info.wasm_memory_bytes;
  console.log(`SmolLM2 over a URL on ${r.info.backend.name}: ${want.length} tokens match; model ${mb(smol.bytes)}, weights ${mb(r.info.model.weight_bytes)}, wasm memory after loading ${mb(wasm)}`);
  // The weights live in GPU buffers: wasm memory peaks at the header, the tokenizer and the
  // largest tensor in flight (SmolLM2's 30 MB embedding), well below the model.
  assert.ok(wasm < 0.6 * smol.bytes, `wasm memory ${mb(wasm)} is not well below the model's ${mb(smol.bytes)}`);
});

test('SmolLM2 from a File on WebGPU and an ArrayBuffer on the CPU: same tokens, weights in wasm memory only on the CPU', { timeout: 300_000 }, async (t) => {
  const skip = browserSkip ?? smol.skip ?? (await webgpuSkipReason(browser.page));
  if (skip) return skipped(t, skip);
  const run = (backend, as) =>
    browser.page.evaluate(
      async ({ url, backend, as, n }) => {
        const { createEngine } = await import('/js/index.js');
        const blob = await (await fetch(url)).blob();
        const name = url.split('/').pop();
        // A File goes in by file.stream(); an ArrayBuffer in 8 MiB subarrays.
        const input = as === 'file' ? new File([blob], name) : { name, data: await blob.arrayBuffer() };
        const stages = new Set();
        const engine = await createEngine({ files: [input] }, { backend, context: 256, onProgress: (p) => stages.add(p.stage) });
        const reply = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'What is the capital of France?' }], max_tokens: n, temperature: 0 });
        const result = { info: engine.info, usage: reply.usage, text: reply.choices[0].message.content, stages: [...stages] };
        await engine.unload();
        return result;
      },
      { url: smol.url, backend, as, n: want.length },
    );
  // The reference's whole greedy answer, on both: the CPU fallback's decode rows compute in the
  // 16-bit activation class (decode_simd128.rs), which must keep the f32 reference's tokens.
  const want = JSON.parse(readFileSync(smol.reference, 'utf8')).greedy_ids;
  const gpu = await run('webgpu', 'file');
  const cpu = await run('cpu', 'arraybuffer');
  assert.equal(gpu.info.backend.kind, 'webgpu');
  assert.equal(cpu.info.backend.kind, 'cpu');
  assert.deepEqual(cpu.usage.token_ids, want, 'the CPU fallback against HF transformers');
  assert.deepEqual(gpu.usage.token_ids, want, 'WebGPU against HF transformers');
  assert.equal(cpu.text, 'The capital of France is Paris.');
  assert.deepEqual(gpu.stages, ['upload']);
  const weights = cpu.info.model.weight_bytes;
  const [g, c] = [gpu.info.wasm_memory_bytes, cpu.info.wasm_memory_bytes];
  console.log(`SmolLM2 from a File on WebGPU: wasm memory ${mb(g)}; from an ArrayBuffer on the CPU: ${mb(c)} (weights ${mb(weights)}); tokens ${cpu.usage.token_ids} "${cpu.text}"`);
  assert.ok(g < 0.6 * smol.bytes, `WebGPU: wasm memory ${mb(g)} is not well below the model's ${mb(smol.bytes)}`);
  // On the CPU the weights are in wasm memory once (plus a 12 MB KV cache and one tensor in
  // flight), never twice.
  assert.ok(c > weights && c < 2 * weights, `CPU: wasm memory ${mb(c)} for ${mb(weights)} of weights`);
  assert.ok(c - g > weights / 2, `the weights (${mb(weights)}) should account for most of the CPU's extra memory (${mb(c - g)})`);
});

test('storage quota: a download that does not fit fails with a clear message; { cache: false } still loads', { timeout: 180_000 }, async (t) => {
  const skip = browserSkip ?? stories.skip;
  if (skip) return skipped(t, skip);
  const load = (urls, options) =>
    browser.page.evaluate(
      async ({ urls, options }) => {
        const { createEngine, listCachedModels } = await import('/js/index.js');
        try {
          const engine = await createEngine({ urls }, { backend: 'cpu', ...options });
          const stream = engine.generate('', { max_tokens: 20, temperature: 0, ignore_eos: true });
          for await (const _ of stream);
          const usage = await stream.usage;
          await engine.unload();
          return { tokens: usage.token_ids, cached: await listCachedModels() };
        } catch (e) {
          return { error: `${e instanceof Error} ${e.message}`, cached: await listCachedModels() };
        }
      },
      { urls, options },
    );
  await browser.page.evaluate(async () => {
    const { listCachedModels, deleteCachedModel } = await import('/js/index.js');
    for (const { url } of await listCachedModels()) await deleteCachedModel(url);
  });
  const advice = 'free space with deleteCachedModel\\(\\) or load with \\{ cache: false \\}';

  // A browser that reports its quota: refused before anything is stored.
  const early = await load(stories.urls, { workerUrl: '/tests/browser/fake-quota-worker.js' });
  assert.match(early.error ?? '', new RegExp(`^true storage quota exceeded: http\\S+/model\\.safetensors is 1\\.0 MB but only 0\\.2 MB of browser storage is free; ${advice}$`));
  assert.ok(!early.cached.some((c) => c.url.endsWith('model.safetensors')));

  // Chromium hides its real quota from estimate(); its cache.put refuses (QuotaExceededError).
  // With no content-length (`?nolength`) nothing could be checked up front either.
  const cdp = await browser.page.context().newCDPSession(browser.page);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.origin, quotaSize: 500_000 });
  try {
    const late = await load(stories.urls.map((u) => `${u}?nolength`), {});
    assert.match(late.error ?? '', new RegExp(`^true storage quota exceeded: http\\S+/model\\.safetensors\\?nolength is 1\\.0 MB and the browser refused to store it; ${advice}$`));

    const before = server.requests.get('/models/stories260K/model.safetensors') ?? 0;
    const streamed = await load(stories.urls, { cache: false });
    assert.equal(streamed.error, undefined);
    const reference = JSON.parse(readFileSync(join(stories.dir, 'reference_greedy.json'), 'utf8'));
    assert.deepEqual(streamed.tokens, reference.greedy_token_ids.slice(0, 20));
    assert.equal(server.requests.get('/models/stories260K/model.safetensors'), before + 1, 'downloaded once more');
    assert.ok(!streamed.cached.some((c) => c.url.endsWith('model.safetensors')), 'cache: false stores nothing');
    console.log(`quota: "${early.error.slice(5)}"; "${late.error.slice(5)}"; cache: false loaded and matched 20 reference tokens`);
  } finally {
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.origin });
  }
});
