// Memory that fits before it loads: the engine plans weights, KV pool and activations from
// config.json and the weight files' sizes before any weights download, against `memoryBudget`
// and the GPU's binding limit (simulated small with `debugLimits`), and reports what it holds
// through `engine.stats()`. On WebGPU (SwiftShader here) and the CPU fallback.
//
// The weights' size comes from a one-byte Range request (or the cache's copy): a refused model
// costs that request and one byte of its weights, never their download. A GGUF file's config
// is in its header: a Range request for its first MiBs (or the cache's copy) plans it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { browserSkipReason, openBrowser, smolLM2, startServer, stories260K, webgpuSkipReason } from './harness.mjs';

const model = stories260K();
const skip = (await browserSkipReason()) ?? model.skip ?? null;
const weights = '/models/stories260K/model.safetensors';
const gguf = smolLM2();
let server, browser, gpuSkip;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await openBrowser(server.origin);
  gpuSkip = await webgpuSkipReason(browser.page);
  await browser.page.evaluate((urls) => {
    // Loads stories260K with `options`; generates greedily unless `generate` is false.
    window.run = async (options, { generate = true, watch = false } = {}) => {
      const { createEngine } = await import('/js/index.js');
      let engine;
      try {
        engine = await createEngine({ urls }, options);
      } catch (e) {
        return { error: e.message };
      }
      const out = { info: engine.info, before: await engine.stats() };
      if (generate) {
        const stream = engine.generate('Once upon a time', { max_tokens: 24, temperature: 0, ignore_eos: true });
        for await (const _ of stream) if (watch && !out.during) out.during = await engine.stats();
        out.tokens = (await stream.usage).token_ids;
        out.after = await engine.stats();
      }
      await engine.unload();
      return out;
    };
    // Loads `source` with `options` and unloads it: its info and stats, or the error.
    window.load = async (source, options) => {
      const { createEngine } = await import('/js/index.js');
      try {
        const engine = await createEngine(source, options);
        const out = { info: engine.info, stats: await engine.stats() };
        await engine.unload();
        return out;
      } catch (e) {
        return { error: e.message };
      }
    };
  }, model.urls);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
  return true;
}

/** The backends to run on, each with a SKIP reason or null. */
const backends = () => [['cpu', null], ['webgpu', gpuSkip]];

test('a memoryBudget under the weights is refused before they download', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const r = await browser.page.evaluate(() => window.run({ backend: 'cpu', memoryBudget: '100KB' }));
  assert.ok(r.error, JSON.stringify(r));
  assert.match(r.error, /does not fit/);
  assert.match(r.error, /memoryBudget \(100000 bytes\)/);
  const needs = Number(/needs (\d+) bytes/.exec(r.error)?.[1]);
  assert.ok(needs > 100_000, r.error);
  const asked = server.log.filter((e) => e.path === weights);
  assert.ok(asked.every((e) => e.range === 'bytes=0-0'), `weights requests: ${JSON.stringify(asked)}`);
  assert.ok(server.served(weights) <= 1, `${server.served(weights)} bytes of weights were sent`);
  console.log(`memory: refused before download (${asked.length} one-byte size probe): ${r.error}`);
});

test('a budget for the weights but not the default pool shrinks the pool', { timeout: 180_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  for (const [backend, why] of backends()) {
    if (why) {
      console.log(`SKIP ${t.name} on ${backend}: ${why}`);
      continue;
    }
    // A budget that fits anything: the weights' size is asked for, as it is below.
    const full = await browser.page.evaluate((backend) => window.run({ backend, memoryBudget: '1GB' }), backend);
    assert.ok(!full.error, full.error);
    const m = full.info.memory;
    assert.equal(full.info.backend.kind, backend);
    assert.equal(m.kv_blocks, 128, JSON.stringify(m));
    assert.deepEqual(m.notes, []);
    const budget = m.weights_bytes + m.scratch_bytes + 10 * m.kv_block_bytes + 100;
    const r = await browser.page.evaluate(([backend, budget]) => window.run({ backend, memoryBudget: budget }), [backend, budget]);
    assert.ok(!r.error, r.error);
    assert.equal(r.info.memory.kv_blocks, 10);
    assert.equal(r.info.model.kv_tokens, 160);
    assert.equal(r.info.model.context, 160);
    assert.ok(r.info.memory.total_bytes <= budget);
    assert.match(r.info.memory.notes[0], /KV pool cut to 160 tokens \(from 2048\) to fit memoryBudget/);
    assert.equal(r.before.kv_bytes_total, 10 * m.kv_block_bytes);
    assert.deepEqual(r.tokens, full.tokens, 'the smaller pool generates the same tokens');
    console.log(`memory on ${backend}: ${r.info.memory.notes.join('; ')}`);
  }
});

test('kvCacheMemory gives a pool of whole blocks', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  for (const [backend, why] of backends()) {
    if (why) {
      console.log(`SKIP ${t.name} on ${backend}: ${why}`);
      continue;
    }
    const r = await browser.page.evaluate((backend) => window.run({ backend, kvCacheMemory: '1MiB' }, { generate: false }), backend);
    assert.ok(!r.error, r.error);
    const block = r.info.model.kv_bytes_per_token * 16;
    const blocks = Math.floor((1 << 20) / block);
    assert.equal(r.before.kv_block_bytes, block);
    assert.equal(r.before.kv_blocks_total, blocks);
    assert.equal(r.before.kv_bytes_total, blocks * block);
    assert.equal(r.before.kv_bytes_used, 0);
    assert.equal(r.before.kv_bytes_free, blocks * block);
    assert.equal(r.info.model.kv_tokens, blocks * 16);
    assert.ok(r.before.weights_bytes > 0 && r.before.scratch_bytes > 0, JSON.stringify(r.before));
    console.log(`memory on ${backend}: kvCacheMemory 1MiB -> ${blocks} blocks of ${block} bytes`);
  }
});

test('stats() shows KV in use while a request runs and none after', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  for (const [backend, why] of backends()) {
    if (why) {
      console.log(`SKIP ${t.name} on ${backend}: ${why}`);
      continue;
    }
    const r = await browser.page.evaluate((backend) => window.run({ backend, contextLength: 256 }, { watch: true }), backend);
    assert.ok(!r.error, r.error);
    assert.equal(r.info.model.context, 256);
    assert.ok(r.during, 'stats() answered during the request');
    assert.ok(r.during.kv_blocks_used > 0, JSON.stringify(r.during));
    assert.equal(r.during.kv_bytes_used, r.during.kv_blocks_used * r.during.kv_block_bytes);
    assert.equal(r.during.kv_bytes_used + r.during.kv_bytes_free, r.during.kv_bytes_total);
    // Finished: its blocks are free (some kept idle for their prefix, counted as free).
    assert.equal(r.after.kv_blocks_used, 0, JSON.stringify(r.after));
    assert.equal(r.after.kv_bytes_free, r.after.kv_bytes_total);
    console.log(`memory on ${backend}: ${r.during.kv_blocks_used} KV blocks in use during, ${r.after.kv_blocks_used} after (${r.after.kv_blocks_cached} cached)`);
  }
});

test('a small binding limit cuts the KV pool, or moves an activation buffer to the CPU', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  if (gpuSkip) return skipped(t, gpuSkip);
  const cut = await browser.page.evaluate(() => window.run({ backend: 'webgpu', kvTokens: 4096, debugLimits: { maxStorageBufferBindingSize: 256 << 10 } }));
  assert.ok(!cut.error, cut.error);
  assert.equal(cut.info.backend.kind, 'webgpu');
  // One layer's K: 16 tokens x 4 KV heads x 8 dims x 4 bytes = 2048 bytes a block.
  assert.equal(cut.info.memory.kv_blocks, (256 << 10) / 2048);
  assert.match(cut.info.memory.notes[0], /KV pool cut to 2048 tokens \(from 4096\).*maxStorageBufferBindingSize \(262144 bytes\)/);
  assert.equal(cut.tokens.length, 24);

  const limits = { maxStorageBufferBindingSize: 64 << 10 };
  const auto = await browser.page.evaluate((limits) => window.run({ backend: 'auto', debugLimits: limits }), limits);
  assert.ok(!auto.error, auto.error);
  assert.equal(auto.info.backend.kind, 'cpu');
  assert.match(auto.info.backend.fallback_reason, /activation buffer 'mlp gate\/up'.*maxStorageBufferBindingSize \(65536 bytes\); running on the CPU/);
  assert.equal(auto.tokens.length, 24);
  assert.deepEqual(auto.tokens, cut.tokens);

  const before = server.log.filter((e) => e.path === weights && e.range !== 'bytes=0-0').length;
  const refused = await browser.page.evaluate((limits) => window.run({ backend: 'webgpu', debugLimits: limits, cache: false }), limits);
  assert.match(refused.error ?? '', /needs one buffer of \d+ bytes, over the GPU's maxStorageBufferBindingSize \(65536 bytes\)/);
  assert.equal(server.log.filter((e) => e.path === weights && e.range !== 'bytes=0-0').length, before, 'no weights were downloaded');
  console.log(`memory: binding 256KiB -> ${cut.info.memory.notes[0]}; 64KiB -> auto on the CPU, webgpu refused: ${refused.error}`);
});

test('a GGUF source is planned from its header before its weights download', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  if (gguf.skip) return skipped(t, gguf.skip);
  const path = gguf.url;
  const served = () => server.served(path);

  // A server that ignores Range: no header, so no config to size kvCacheMemory with, said so.
  server.ignoreRange(path);
  const noRange = await browser.page.evaluate((url) => window.load({ url }, { backend: 'cpu', kvCacheMemory: '1MiB' }), path);
  server.ignoreRange(path, false);
  assert.match(noRange.error ?? '', /kvCacheMemory needs the model's config.*ignored a Range request for its GGUF header/, JSON.stringify(noRange));

  // A budget over the weights but under weights, activations and one KV block: refused with
  // every number, having read the header only.
  const before = served();
  const budget = gguf.bytes + 1000;
  const refused = await browser.page.evaluate(([url, budget]) => window.load({ url }, { backend: 'cpu', memoryBudget: budget }), [path, budget]);
  const read = served() - before;
  assert.match(refused.error ?? '', new RegExp(`the weights \\(${gguf.bytes} bytes\\) with the activations \\(\\d+ bytes\\), before any KV pool \\(\\d+ bytes a block of 16 tokens\\) needs \\d+ bytes, over memoryBudget \\(${budget} bytes\\)`), JSON.stringify(refused));
  assert.ok(read > 0 && read <= 64 << 20 && read < gguf.bytes / 4, `${read} of ${gguf.bytes} bytes were sent`);

  // kvCacheMemory sizes the pool from the header's config (downloading the file into the cache).
  const r = await browser.page.evaluate((url) => window.load({ url }, { backend: 'cpu', kvCacheMemory: '1MiB' }), path);
  assert.ok(!r.error, r.error);
  const block = r.info.model.kv_bytes_per_token * 16;
  const blocks = Math.floor((1 << 20) / block);
  assert.ok(blocks > 0, `a block of ${block} bytes`);
  assert.equal(r.stats.kv_block_bytes, block);
  assert.equal(r.stats.kv_bytes_total, blocks * block);
  assert.equal(r.info.memory.kv_bytes, blocks * block);
  assert.equal(r.info.memory.weights_bytes, gguf.bytes);
  assert.ok(r.info.memory.scratch_bytes > 0, JSON.stringify(r.info.memory));

  // Cached, the header comes from the cache: no byte more from the server.
  const cachedBefore = served();
  const again = await browser.page.evaluate((url) => window.load({ url }, { backend: 'cpu', kvCacheMemory: '1MiB' }), path);
  assert.ok(!again.error, again.error);
  assert.equal(again.stats.kv_bytes_total, blocks * block);
  assert.equal(served(), cachedBefore, 'the cached file planned without the network');

  // A File input is planned from its first bytes the same way.
  const fromFile = await browser.page.evaluate(async (url) => {
    const data = await (await fetch(url)).blob();
    return window.load({ files: [{ name: 'smollm2.gguf', data }] }, { backend: 'cpu', kvCacheMemory: '1MiB' });
  }, path);
  assert.ok(!fromFile.error, fromFile.error);
  assert.equal(fromFile.stats.kv_bytes_total, blocks * block);
  assert.equal(fromFile.info.memory.kv_bytes, blocks * block);
  console.log(`memory: GGUF refused after ${read} of ${gguf.bytes} bytes (${refused.error}); kvCacheMemory 1MiB -> ${blocks} blocks of ${block} bytes`);
});
