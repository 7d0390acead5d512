// A lost GPU device is survived: stories260K on WebGPU (SwiftShader here), its device
// destroyed mid-generation through the testing hook `engine.debug.loseDevice()`. The running
// and the queued generation end with the device-lost error, the engine dispatches
// 'device-lost', 'reloading' and 'ready' in that order, the model is loaded again from the
// Cache API (the server sees no further request for its files), and greedy decoding gives the
// same tokens as before the loss. A model given as ArrayBuffers reloads too (the worker keeps
// them as Blobs); should no new device be had, the engine goes on on the CPU.

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

const modelRequests = () => model.urls.map((u) => server.requests.get(u) ?? 0);

/**
 * In the page: loads stories260K on WebGPU by URL, or as ArrayBuffers when `buffers` (through
 * `workerUrl` when given), decodes
 * `n` greedy tokens, then starts a long generation and a second one queued behind it
 * (maxSeqs 1), destroys the device after the first piece, and once the engine is 'ready'
 * decodes the `n` tokens again. Also a request made right at the loss, which waits.
 */
async function loseMidGeneration({ workerUrl, buffers = false } = {}) {
  return browser.page.evaluate(
    async ({ urls, workerUrl, buffers }) => {
      const { createEngine } = await import('/js/index.js');
      const greedy = async (engine, n) => {
        const stream = engine.generate('', { max_tokens: n, temperature: 0, ignore_eos: true });
        for await (const _ of stream);
        return (await stream.usage).token_ids;
      };
      const ended = async (stream, onPiece = () => {}) => {
        let pieces = 0;
        try {
          for await (const _ of stream) await onPiece(++pieces);
          return { pieces, usage: await stream.usage };
        } catch (e) {
          return { pieces, error: { name: e.name, code: e.code, message: e.message } };
        }
      };
      const withTimeout = (promise, ms, what) =>
        Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms))]);

      let source = { urls };
      if (buffers) {
        const files = [];
        for (const url of urls) files.push({ name: url.split('/').pop(), data: await (await fetch(url)).arrayBuffer() });
        source = { files };
      }
      const engine = await createEngine(source, { backend: 'webgpu', maxSeqs: 1, workerUrl });
      const backendBefore = engine.backend;
      const events = [];
      let duringReload = null;
      const settled = new Promise((resolve) => {
        for (const type of ['device-lost', 'reloading', 'ready', 'reload-failed']) {
          engine.addEventListener(type, (e) => {
            events.push({ type, detail: e.detail });
            if (type === 'ready' || type === 'reload-failed') resolve();
          });
        }
      });
      // A request made once the loss is known: it waits for the reload, then runs.
      engine.addEventListener('device-lost', () => {
        duringReload = ended(engine.generate('', { max_tokens: 20, temperature: 0, ignore_eos: true }));
      });

      const before = await greedy(engine, 40);
      // 500 tokens (the context is 512) run long enough on SwiftShader for the loss to land
      // mid-generation; the second request waits behind the first (maxSeqs 1).
      const long = engine.generate('', { max_tokens: 500, temperature: 0, ignore_eos: true });
      const queued = engine.generate('Once upon', { max_tokens: 500, temperature: 0, ignore_eos: true });
      let lostAt = null;
      const [running, waiting] = await Promise.all([
        ended(long, async (pieces) => {
          if (pieces > 1) return;
          lostAt = performance.now();
          await engine.debug.loseDevice();
        }),
        ended(queued),
      ]);
      const endedAfterMs = performance.now() - lostAt;
      await withTimeout(settled, 60_000, "'ready' or 'reload-failed' event");
      const during = await withTimeout(duringReload, 60_000, 'answer to the request made during the reload');
      const after = events.at(-1).type === 'ready' ? await greedy(engine, 40) : null;
      const result = {
        backendBefore,
        backendAfter: engine.backend,
        fallbackReason: engine.fallbackReason,
        infoKind: engine.info.backend.kind,
        events: events.map((e) => ({ type: e.type, reason: e.detail.reason, message: e.detail.message, backend: e.detail.backend })),
        running,
        waiting,
        during,
        before,
        after,
        endedAfterMs,
      };
      await engine.unload();
      return result;
    },
    { urls: model.urls, workerUrl, buffers },
  );
}

/** The checks both tests share; returns the reason the device was lost with. */
function checkLoss(r) {
  assert.deepEqual(r.events.map((e) => e.type), ['device-lost', 'reloading', 'ready'], JSON.stringify(r.events));
  const reason = r.events[0].reason;
  assert.match(reason, /^destroyed/, 'loseDevice() destroys the device');
  assert.equal(r.events[1].reason, reason);

  // The generation in flight and the one queued behind it end with the loss, saying so.
  const lost = /^the GPU device was lost \(reason: destroyed.*\); the engine is reloading$/;
  assert.ok(r.running.error, `the running generation ended without an error: ${JSON.stringify(r.running.usage)}`);
  assert.ok(r.running.pieces >= 1 && r.running.pieces < 500, `${r.running.pieces} pieces before the loss`);
  assert.equal(r.running.error.name, 'TandemError');
  assert.equal(r.running.error.code, 'device-lost');
  assert.match(r.running.error.message, lost);
  assert.ok(r.waiting.error, `the queued generation ended without an error: ${JSON.stringify(r.waiting.usage)}`);
  assert.equal(r.waiting.error.code, 'device-lost');
  assert.match(r.waiting.error.message, lost);

  // Greedy decoding on the reloaded engine gives the tokens it gave before the loss, which are
  // the reference's; the request made during the reload ran once it was done.
  const reference = JSON.parse(readFileSync(join(model.dir, 'reference_greedy.json'), 'utf8'));
  assert.deepEqual(r.before, reference.greedy_token_ids.slice(0, 40));
  assert.deepEqual(r.after, r.before);
  assert.equal(r.during.error, undefined, JSON.stringify(r.during.error));
  assert.deepEqual(r.during.usage.token_ids, r.before.slice(0, 20));
  return reason;
}

test('a lost GPU device ends its requests and the engine reloads from the cache', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const noGpu = await webgpuSkipReason(browser.page);
  if (noGpu) return skipped(t, noGpu);
  const r = await loseMidGeneration();
  const requests = modelRequests();
  assert.deepEqual(requests, model.urls.map(() => 1), 'each model file was fetched once, for the first load');
  const reason = checkLoss(r);
  assert.notEqual(r.backendBefore, 'cpu');
  assert.equal(r.backendAfter, r.backendBefore, 'a new WebGPU device on the same adapter');
  assert.equal(r.infoKind, 'webgpu');
  assert.equal(r.fallbackReason, null);
  console.log(
    `device-lost: events ${r.events.map((e) => e.type).join(' -> ')} (reason "${reason}"); ` +
      `running request ended after ${r.running.pieces} pieces with "${r.running.error.message}"; ` +
      `${r.endedAfterMs.toFixed(0)} ms after loseDevice(); queued one too; model files fetched ${requests.join('/')} times in all; 40 greedy tokens equal before and after on ${r.backendAfter}`,
  );
});

test('with no GPU device to be had after the loss the engine goes on on the CPU', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const noGpu = await webgpuSkipReason(browser.page);
  if (noGpu) return skipped(t, noGpu);
  const before = modelRequests();
  // Its navigator.gpu has no adapter once a device has been destroyed.
  const r = await loseMidGeneration({ workerUrl: '/tests/browser/no-gpu-after-loss-worker.js' });
  assert.deepEqual(modelRequests(), before, 'the model files came from the cache');
  checkLoss(r);
  assert.notEqual(r.backendBefore, 'cpu');
  assert.equal(r.backendAfter, 'cpu');
  assert.equal(r.infoKind, 'cpu');
  assert.equal(r.events[2].backend, 'cpu');
  assert.match(r.fallbackReason ?? '', /^WebGPU could not be set up again after the GPU device was lost \(.+\); running on the CPU$/);
  console.log(`device-lost without a new device: reloaded on the CPU ("${r.fallbackReason}"); same 40 greedy tokens`);
});

test('a model given as ArrayBuffers is loaded again after the loss, with no fetch', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const noGpu = await webgpuSkipReason(browser.page);
  if (noGpu) return skipped(t, noGpu);
  const before = modelRequests();
  const r = await loseMidGeneration({ buffers: true });
  // The page fetched each file once to make its ArrayBuffer; the reload fetched none.
  assert.deepEqual(modelRequests(), before.map((n) => n + 1));
  checkLoss(r);
  assert.notEqual(r.backendAfter, 'cpu');
  console.log(`device-lost with ArrayBuffer files: reloaded on ${r.backendAfter}; same 40 greedy tokens`);
});

test('losing the device is refused on the CPU backend', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const message = await browser.page.evaluate(async (urls) => {
    const { createEngine } = await import('/js/index.js');
    const engine = await createEngine({ urls }, { backend: 'cpu' });
    try {
      await engine.debug.loseDevice();
      return null;
    } catch (e) {
      return e.message;
    } finally {
      await engine.unload();
    }
  }, model.urls);
  assert.match(message ?? 'no error', /runs on the CPU: it has no GPU device to lose/);
});
