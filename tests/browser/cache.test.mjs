// Downloads are kept in the Cache API: a second engine on the same URLs does not fetch the
// model again (the test server counts requests), and the cache can be listed and cleared.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { browserSkipReason, openBrowser, startServer, stories260K } from './harness.mjs';

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

test('a second load of the same URLs comes from the cache', { timeout: 120_000 }, async (t) => {
  if (skip) {
    console.log(`SKIP ${t.name}: ${skip}`);
    return t.skip(skip);
  }
  const weights = '/models/stories260K/model.safetensors';
  const load = () =>
    browser.page.evaluate(async (urls) => {
      const { createEngine } = await import('/js/index.js');
      const stages = [];
      const engine = await createEngine({ urls }, { backend: 'cpu', onProgress: (p) => stages.push(p.stage) });
      const stream = engine.generate('', { max_tokens: 5, temperature: 0 });
      for await (const _ of stream);
      const usage = await stream.usage;
      await engine.unload();
      return { stages: [...new Set(stages)], tokens: usage.token_ids };
    }, model.urls);

  const first = await load();
  assert.equal(server.requests.get(weights), 1, 'the first load downloads the weights');
  assert.ok(first.stages.includes('download'), `stages ${first.stages}`);

  const second = await load();
  for (const url of model.urls) assert.equal(server.requests.get(url), 1, `${url} was fetched again`);
  assert.ok(second.stages.includes('cache') && !second.stages.includes('download'), `stages ${second.stages}`);
  assert.deepEqual(second.tokens, first.tokens);

  const listed = await browser.page.evaluate(async () => (await import('/js/index.js')).listCachedModels());
  const cached = listed.find((m) => m.url.endsWith(weights));
  assert.ok(cached && cached.bytes > 0, JSON.stringify(listed));

  const deleted = await browser.page.evaluate(async (url) => (await import('/js/index.js')).deleteCachedModel(url), weights);
  assert.equal(deleted, true);
  await load();
  assert.equal(server.requests.get(weights), 2, 'after deleteCachedModel the weights are downloaded again');
  console.log(`cache: weights fetched once for two loads; listed ${listed.length} cached files; deleted and refetched`);
});
