// `createEngine(source, { shared: true })`: one engine in a SharedWorker for every tab of the
// origin. Tabs asking for the same model attach to it (one download, one load), their requests
// are batched in the same engine steps with the tokens each tab gets alone, a tab that closes
// mid-stream has its requests aborted, one tab's long queue does not hold back another tab's
// first token, and a shared engine every tab has left unloads after its grace period.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
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

const weights = '/models/stories260K/model.safetensors';

/** A new page of the test origin. */
async function newPage() {
  const page = await browser.page.context().newPage();
  await page.goto(`${server.origin}/tests/browser/page.html`);
  return page;
}

/** Creates `window.engine` in `page`: shared, stories260K by URL; returns what it says of itself. */
function attach(page, options) {
  return page.evaluate(
    async ({ urls, options }) => {
      const { createEngine } = await import('/js/index.js');
      const stages = new Set();
      window.engine = await createEngine({ urls }, { ...options, shared: true, onProgress: (p) => stages.add(p.stage) });
      return { shared: engine.shared, backend: engine.info.backend.kind, fallbackReason: engine.fallbackReason, stages: [...stages], stats: await engine.workerStats() };
    },
    { urls: model.urls, options },
  );
}

/** Runs `prompt` greedily in `page`'s engine; resolves with its token ids. */
function greedy(page, prompt, maxTokens) {
  return page.evaluate(
    async ({ prompt, maxTokens }) => {
      const stream = engine.generate(prompt, { max_tokens: maxTokens, temperature: 0, ignore_eos: true });
      for await (const _ of stream);
      return (await stream.usage).token_ids;
    },
    { prompt, maxTokens },
  );
}

const stats = (page) => page.evaluate(() => engine.workerStats());

/** Polls `page`'s worker stats until `done(stats)`; the last stats either way. */
async function statsUntil(page, done, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const s = await stats(page);
    if (done(s) || Date.now() > end) return s;
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

test('tabs share one engine: one download, one load, batched steps, tab-local aborts, fair admission', { timeout: 300_000 }, async (t) => {
  if (skip) {
    console.log(`SKIP ${t.name}: ${skip}`);
    return t.skip(skip);
  }
  // Room in the KV cache for four whole contexts: the engine's four places never wait for blocks.
  const options = { backend: 'cpu', kvTokens: 4 * 512 };
  const a = browser.page;
  const first = await attach(a, options);
  assert.equal(first.shared, true, first.fallbackReason);
  assert.equal(first.backend, 'cpu');
  assert.equal(first.stats.loads, 1);
  assert.equal(server.requests.get(weights), 1);

  const b = await newPage();
  const c = await newPage();
  const others = [await attach(b, options), await attach(c, options)];
  for (const o of others) {
    assert.equal(o.shared, true);
    assert.deepEqual(o.stages, [], 'an attached tab neither downloads nor loads');
    assert.equal(o.stats.loads, 1, 'the model is loaded once for three tabs');
  }
  assert.equal(server.requests.get(weights), 1, 'the weights are fetched once for three tabs');
  assert.equal(others[1].stats.clients, 3);

  // Each prompt alone, then the three at once from three tabs: the same tokens, in shared steps.
  const prompts = ['Once upon a time', 'The little dog', 'Lily saw a'];
  const alone = [];
  for (const p of prompts) alone.push(await greedy(a, p, 120));
  const before = await stats(a);
  const together = await Promise.all([greedy(a, prompts[0], 120), greedy(b, prompts[1], 120), greedy(c, prompts[2], 120)]);
  const after = await stats(a);
  assert.deepEqual(together, alone, 'each tab gets the tokens it gets alone');
  const shared = after.sharedSteps - before.sharedSteps;
  assert.ok(shared > 0, `no step held requests of more than one tab: ${JSON.stringify(after)}`);
  assert.ok(after.mostClientsInStep >= 2, JSON.stringify(after));
  console.log(`shared: 3 tabs, ${server.requests.get(weights)} download, ${after.loads} load; ${shared} of ${after.steps - before.steps} steps held more than one tab's requests (most tabs in a step: ${after.mostClientsInStep})`);

  // Tab C queues far more work than a few steps do, then closes mid-stream.
  await c.evaluate(() => {
    window.texts = 0;
    for (let i = 0; i < 24; i++) {
      (async () => {
        for await (const _ of engine.generate('Once upon a time', { max_tokens: 400, temperature: 0, ignore_eos: true })) window.texts++;
      })().catch(() => {});
    }
  });
  await c.waitForFunction(() => window.texts > 10);
  const busy = await stats(a);
  assert.ok(busy.inEngine > 0, JSON.stringify(busy));
  const memory = () => a.evaluate(() => engine.stats());
  const held = await memory();
  assert.ok(held.kv_blocks_used > 0, `tab C's requests hold no KV blocks: ${JSON.stringify(held)}`);
  const stepsAtClose = busy.steps;
  await c.close();
  const closed = await statsUntil(a, (s) => s.clients === 2 && s.inEngine === 0);
  assert.equal(closed.clients, 2, `the closed tab is still a client: ${JSON.stringify(closed)}`);
  assert.equal(closed.inEngine, 0, `the closed tab's requests still run: ${JSON.stringify(closed)}`);
  // Their blocks are back in the pool (the engine refreshes its stats after each step).
  const freed = await memory();
  assert.equal(freed.kv_blocks_used, 0, `the closed tab's blocks are still held: ${JSON.stringify(freed)}`);
  const stepsAfter = closed.steps - stepsAtClose;
  // Its queue needed about 24 * 400 / 4 = 2400 steps more; the abort ends it within a few.
  assert.ok(stepsAfter < 400, `${stepsAfter} steps ran after the tab closed`);
  console.log(`shared: a tab closed mid-stream; its requests ended ${stepsAfter} steps later (of ~2400 queued); KV blocks used ${held.kv_blocks_used} -> ${freed.kv_blocks_used}`);

  // Tab A queues 12 long requests; tab B's one request gets its first token before A's queue
  // drains (first come, first served would put it behind all twelve).
  await a.evaluate(() => {
    window.completions = [];
    window.firstText = false;
    window.queueDone = Promise.all(
      Array.from({ length: 12 }, async () => {
        for await (const _ of engine.generate('Once upon a time', { max_tokens: 300, temperature: 0, ignore_eos: true })) window.firstText = true;
        window.completions.push(Date.now());
      }),
    );
  });
  await a.waitForFunction(() => window.firstText);
  const queued = await stats(a);
  const firstToken = await b.evaluate(async () => {
    for await (const _ of engine.generate('The little dog', { max_tokens: 5, temperature: 0 })) return Date.now();
  });
  const completions = await a.evaluate(async () => {
    await window.queueDone;
    return window.completions;
  });
  const doneBefore = completions.filter((at) => at <= firstToken).length;
  // Round robin lets B in at the first or second place freed: at most the four A requests in
  // the engine (maxSeqs 4) end first. First come, first served measured 8 here.
  assert.ok(doneBefore < 12, `tab B's first token came after tab A's whole queue (${JSON.stringify(queued)})`);
  assert.ok(doneBefore <= 4, `tab B waited for ${doneBefore} of tab A's 12 requests`);
  console.log(`shared: with 12 of tab A's requests queued (${queued.perClient.map((p) => `tab ${p.client}: ${p.running} in the engine, ${p.queued} waiting`).join('; ')}), tab B's first token came after ${doneBefore} of them ended`);

  // Every tab leaves: within the grace period a tab attaches again with no load; after it, the
  // model is loaded again (from the Cache API).
  await b.evaluate(() => engine.unload());
  await a.evaluate(() => engine.unload());
  const back = await attach(a, { ...options, sharedGraceMs: 300 });
  assert.equal(back.stats.loads, 1, 'a tab back within the grace period attaches to the loaded engine');
  await a.evaluate(() => engine.unload());
  await new Promise((ok) => setTimeout(ok, 1000));
  const again = await attach(a, options);
  assert.equal(again.stats.loads, 2, 'after the grace period the engine was unloaded and is loaded again');
  assert.equal(server.requests.get(weights), 1);
  await a.evaluate(() => engine.unload());
  await b.close();
  console.log('shared: attached again within the grace period with no load; loaded again after it');
});

test('a shared engine on WebGPU where the SharedWorker has it, else a dedicated worker saying why', { timeout: 300_000 }, async (t) => {
  const why = skip ?? (await webgpuSkipReason(browser.page));
  if (why) {
    console.log(`SKIP ${t.name}: ${why}`);
    return t.skip(why);
  }
  const a = browser.page;
  const probe = await a.evaluate(async () => {
    const code = `onconnect = async (e) => {
      const adapter = self.navigator.gpu ? await navigator.gpu.requestAdapter() : null;
      e.ports[0].postMessage({ gpu: !!self.navigator.gpu, adapter: !!adapter });
    };`;
    const worker = new SharedWorker(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })));
    return new Promise((ok) => (worker.port.onmessage = (e) => ok(e.data)));
  });
  const options = { backend: 'auto', kvTokens: 4 * 512 };
  const first = await attach(a, options);
  if (!probe.gpu) {
    assert.equal(first.shared, false);
    assert.match(first.fallbackReason, /SharedWorker/);
    console.log(`shared: no WebGPU inside a SharedWorker here; dedicated worker (${first.fallbackReason})`);
    await a.evaluate(() => engine.unload());
    return;
  }
  assert.equal(first.shared, true);
  const b = await newPage();
  const second = await attach(b, options);
  assert.equal(second.stats.loads, 1);
  assert.equal(second.backend, first.backend);
  const alone = [await greedy(a, 'Once upon a time', 60), await greedy(a, 'The little dog', 60)];
  const before = await stats(a);
  const together = await Promise.all([greedy(a, 'Once upon a time', 60), greedy(b, 'The little dog', 60)]);
  const after = await stats(a);
  assert.deepEqual(together, alone);
  assert.ok(after.sharedSteps > before.sharedSteps, JSON.stringify(after));
  console.log(`shared: SharedWorker has WebGPU (adapter: ${probe.adapter}); two tabs on backend ${first.backend}, one load, ${after.sharedSteps - before.sharedSteps} shared steps${first.fallbackReason ? `; ${first.fallbackReason}` : ''}`);
  await b.evaluate(() => engine.unload());
  await a.evaluate(() => engine.unload());
  await b.close();
});

test('shared: true without SharedWorker runs in a dedicated worker and says why', { timeout: 120_000 }, async (t) => {
  if (skip) {
    console.log(`SKIP ${t.name}: ${skip}`);
    return t.skip(skip);
  }
  const page = await newPage();
  const r = await page.evaluate(async (urls) => {
    delete window.SharedWorker;
    const { createEngine } = await import('/js/index.js');
    const engine = await createEngine({ urls }, { backend: 'cpu', shared: true });
    const stream = engine.generate('Once upon a time', { max_tokens: 5, temperature: 0 });
    for await (const _ of stream);
    const result = { shared: engine.shared, fallbackReason: engine.fallbackReason, tokens: (await stream.usage).token_ids.length, stats: await engine.workerStats() };
    await engine.unload();
    return result;
  }, model.urls);
  await page.close();
  assert.equal(r.shared, false);
  assert.match(r.fallbackReason, /no SharedWorker.*dedicated worker/);
  assert.equal(r.stats.shared, false);
  assert.equal(r.tokens, 5);
  console.log(`shared: without SharedWorker: ${r.fallbackReason}`);
});
