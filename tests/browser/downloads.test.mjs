// Downloads that resume and verify (js/cache.js): a download cut off keeps the parts it
// finished and the next load, after a page reload too, asks the server only for the rest; a
// server that ignores Range still works; files are checked (size always, sha256 when given)
// and one that fails is refused, named and removed; two pages loading the same URLs share one
// download; progress carries a rate and the time left. The test server counts what it sends.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { browserSkipReason, openBrowser, startServer, stories260K } from './harness.mjs';

const model = stories260K();
const skip = (await browserSkipReason()) ?? model.skip ?? null;
const weights = '/models/stories260K/model.safetensors';
/** Small parts, so that a cut halfway through the 1 MB weights keeps whole parts. */
const PART = 128 << 10;
let server, browser, size, sha256, reference;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await openBrowser(server.origin);
  const file = join(model.dir, 'model.safetensors');
  size = statSync(file).size;
  sha256 = createHash('sha256').update(readFileSync(file)).digest('hex');
  reference = JSON.parse(readFileSync(join(model.dir, 'reference_greedy.json'), 'utf8')).greedy_token_ids.slice(0, 20);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

function skipped(t) {
  console.log(`SKIP ${t.name}: ${skip}`);
  t.skip(skip);
}

/** Loads `source` on the CPU in `page` and generates 20 greedy tokens: `{ tokens } | { error }`, with progress `events`. */
function load(page, source, options = {}) {
  return page.evaluate(
    async ({ source, options }) => {
      const { createEngine } = await import('/js/index.js');
      const events = [];
      const started = Date.now();
      try {
        const engine = await createEngine(source, { backend: 'cpu', ...options, onProgress: (p) => events.push({ ...p, at: performance.now() }) });
        const stream = engine.generate('', { max_tokens: 20, temperature: 0, ignore_eos: true });
        for await (const _ of stream);
        const usage = await stream.usage;
        await engine.unload();
        return { tokens: usage.token_ids, events, started, ended: Date.now() };
      } catch (e) {
        return { error: `${e instanceof Error} ${e.message}`, events, started, ended: Date.now() };
      }
    },
    { source, options: { downloadPartBytes: PART, ...options } },
  );
}

const listed = (page = browser.page) => page.evaluate(async () => (await import('/js/index.js')).listCachedModels());
const weightsEntry = (list) => list.find((m) => m.url.endsWith(weights));
const clearCache = () => browser.page.evaluate(() => caches.delete('tandem-models-v1'));
const weightsLog = () => server.log.filter((e) => e.path === weights);

test('a download cut off halfway fails clearly; after a reload the next load resumes with a Range request', { timeout: 180_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  server.dropAfter(weights, 600_000);
  const cut = await load(browser.page, { urls: model.urls });
  assert.match(cut.error ?? '', /^true download of http\S+\/model\.safetensors was cut off after \d+\.\d MB of 1\.0 MB: .+; the 0\.\d MB in the browser cache are kept and the next load resumes from there$/);
  const partial = weightsEntry(await listed());
  assert.ok(partial?.partial, JSON.stringify(partial));
  // Every part finished before the cut, and none past it.
  const held = partial.bytes;
  assert.equal(held, Math.floor(600_000 / PART) * PART);
  assert.equal(partial.total, size);

  await browser.page.reload();
  const logged = server.log.length;
  const resumed = await load(browser.page, { urls: model.urls });
  assert.equal(resumed.error, undefined);
  assert.deepEqual(resumed.tokens, reference);
  const rest = server.log.slice(logged).filter((e) => e.path === weights);
  assert.deepEqual(rest, [{ path: weights, range: `bytes=${held}-`, status: 206, bytes: size - held }]);
  const served = server.served(weights);
  assert.ok(served < 1.1 * size, `${served} bytes served for a ${size}-byte file`);
  // The resumed download's progress starts at the held bytes.
  const first = resumed.events.find((e) => e.stage === 'download' && e.file === 'model.safetensors');
  assert.ok(first && first.loaded >= held, JSON.stringify(first));
  assert.deepEqual(weightsEntry(await listed()), { url: `${server.origin}${weights}`, bytes: size });

  const uncut = await load(browser.page, { urls: model.urls }, { cache: false });
  assert.deepEqual(resumed.tokens, uncut.tokens);
  console.log(`resume: "${cut.error.slice(5)}"`);
  console.log(`resume: ${held} bytes held; resumed with "${rest[0].range}" (${rest[0].bytes} bytes); ${served} bytes served in all for ${size}; tokens match the reference and an uncut load`);
});

test('a server that ignores Range: the held bytes are skipped, and the file still checks out', { timeout: 180_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  server.dropAfter(weights, 600_000);
  const cut = await load(browser.page, { urls: model.urls });
  assert.match(cut.error ?? '', /was cut off/);
  const held = weightsEntry(await listed()).bytes;
  assert.ok(held >= PART, `held ${held}`);
  server.ignoreRange(weights);
  try {
    const logged = server.log.length;
    const r = await load(browser.page, { urls: model.urls, sha256: { 'model.safetensors': sha256 } });
    assert.equal(r.error, undefined);
    assert.deepEqual(r.tokens, reference);
    const rest = server.log.slice(logged).filter((e) => e.path === weights);
    assert.deepEqual(rest, [{ path: weights, range: `bytes=${held}-`, status: 200, bytes: size }]);
    assert.deepEqual(weightsEntry(await listed()), { url: `${server.origin}${weights}`, bytes: size });
    console.log(`no ranges: ${held} bytes held, the server sent all ${size} again; the rest was cached, sha256 matched, tokens match`);
  } finally {
    server.ignoreRange(weights, false);
  }
});

test('a file that fails its check (sha256 or size) is refused, named and removed; the next load downloads it again', { timeout: 240_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  const wrong = 'ab'.repeat(32);
  const fetches = () => server.requests.get(weights) ?? 0;
  const removed = async () => assert.equal(weightsEntry(await listed()), undefined, 'the file is still cached');
  const mismatch = new RegExp(`^true http\\S+/model\\.safetensors failed its check: sha256 ${sha256}, expected ${wrong}; removed it from the browser cache`);

  // A download that does not match.
  let before = fetches();
  const bad = await load(browser.page, { urls: model.urls, sha256: { 'model.safetensors': wrong } });
  assert.match(bad.error ?? '', mismatch);
  assert.equal(fetches(), before + 1);
  await removed();

  // The right digest: downloaded again, and loads.
  const good = await load(browser.page, { urls: model.urls, sha256: { 'model.safetensors': sha256 } });
  assert.deepEqual(good.tokens, reference);
  assert.equal(fetches(), before + 2);

  // A cached file with a digest that does not match: refused without a download, and removed.
  before = fetches();
  const badCached = await load(browser.page, { urls: model.urls, sha256: { 'model.safetensors': wrong } });
  assert.match(badCached.error ?? '', mismatch);
  assert.equal(fetches(), before);
  await removed();

  // A part that lost bytes: found while reading, refused, removed; then downloaded again.
  await load(browser.page, { urls: model.urls });
  await browser.page.evaluate(async ({ url, part }) => {
    const cache = await caches.open('tandem-models-v1');
    const key = `${url}?tandem-part=${part}`;
    const hit = await cache.match(key);
    await cache.put(key, new Response(new Uint8Array(await hit.arrayBuffer()).slice(0, 1000), { headers: hit.headers }));
  }, { url: `${server.origin}${weights}`, part: PART });
  before = fetches();
  const short = await load(browser.page, { urls: model.urls });
  assert.match(short.error ?? '', new RegExp(`http\\S+/model\\.safetensors in the browser cache is damaged \\(the part at byte ${PART} holds 1000 bytes, not ${PART}\\); removed it from the cache`));
  assert.equal(fetches(), before);
  await removed();
  const again = await load(browser.page, { urls: model.urls });
  assert.deepEqual(again.tokens, reference);
  assert.equal(fetches(), before + 1);

  // An entry of the older format (the whole file under its URL) still counts as cached, and is checked too.
  const putOld = (bytes) =>
    browser.page.evaluate(async ({ url, bytes, size }) => {
      const cache = await caches.open('tandem-models-v1');
      const { deleteCachedModel } = await import('/js/index.js');
      await deleteCachedModel(url);
      const body = new Uint8Array(await (await fetch(url)).arrayBuffer()).slice(0, bytes);
      await cache.put(url, new Response(body, { headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) } }));
    }, { url: `${server.origin}${weights}`, bytes, size });
  await putOld(size);
  before = fetches();
  const old = await load(browser.page, { urls: model.urls, sha256: { 'model.safetensors': sha256 } });
  assert.deepEqual(old.tokens, reference);
  assert.equal(fetches(), before, 'the old entry was downloaded again');
  assert.deepEqual(weightsEntry(await listed()), { url: `${server.origin}${weights}`, bytes: size });
  await putOld(size >> 1);
  before = fetches();
  const truncated = await load(browser.page, { urls: model.urls });
  assert.match(truncated.error ?? '', new RegExp(`http\\S+/model\\.safetensors in the browser cache is damaged \\(it holds ${size >> 1} bytes, not the ${size} it was stored with\\)`));
  assert.equal(fetches(), before);
  await removed();
  console.log(`checks: "${bad.error.slice(5)}"`);
  console.log(`checks: "${short.error.slice(5)}"`);
  console.log(`checks: "${truncated.error.slice(5)}"; an old whole entry loaded (its sha256 matched)`);
});

test('two pages loading the same URLs at once fetch the weights once', { timeout: 180_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  const other = await browser.page.context().newPage();
  try {
    await other.goto(`${server.origin}/tests/browser/page.html`);
    // Slow enough (about 2 s) that the second page asks while the first downloads.
    server.throttle(weights, 500_000);
    const before = server.requests.get(weights) ?? 0;
    const logged = server.log.length;
    const [a, b] = await Promise.all([load(browser.page, { urls: model.urls }), load(other, { urls: model.urls })]);
    assert.equal(a.error, undefined);
    assert.equal(b.error, undefined);
    assert.deepEqual(a.tokens, reference);
    assert.deepEqual(b.tokens, reference);
    assert.ok(a.started < b.ended && b.started < a.ended, 'the loads ran at the same time');
    assert.equal(server.requests.get(weights), before + 1, 'the weights were fetched more than once');
    const served = server.log.slice(logged).filter((e) => e.path === weights).reduce((n, e) => n + e.bytes, 0);
    assert.equal(served, size);
    const downloaded = [a, b].map((r) => r.events.some((e) => e.stage === 'download' && e.file === 'model.safetensors'));
    assert.deepEqual(downloaded.sort(), [false, true], 'one page downloads, the other reads the cache');
    console.log(`shared: two pages loaded together (${a.ended - a.started} ms, ${b.ended - b.started} ms); the weights were fetched once (${served} bytes)`);
  } finally {
    server.throttle(weights, null);
    await other.close();
  }
});

test('download progress reports the file, bytes per second and seconds left', { timeout: 180_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  const rate = 1_000_000;
  server.throttle(weights, rate);
  let r;
  try {
    r = await load(browser.page, { urls: model.urls });
  } finally {
    server.throttle(weights, null);
  }
  assert.equal(r.error, undefined);
  const events = r.events.filter((e) => e.stage === 'download' && e.file === 'model.safetensors');
  assert.ok(events.length > 10, `${events.length} download events`);
  for (const e of events) {
    assert.ok(e.url.endsWith(weights) && e.loaded <= e.total, JSON.stringify(e));
    assert.ok(e.bytesPerSecond === null || (Number.isFinite(e.bytesPerSecond) && e.bytesPerSecond >= 0), JSON.stringify(e));
    assert.ok(e.secondsLeft === null || (Number.isFinite(e.secondsLeft) && e.secondsLeft >= 0), JSON.stringify(e));
  }
  // The pace the page saw (the server's at most; less on a busy machine).
  const last = events.at(-1);
  const seen = ((last.loaded - events[0].loaded) * 1000) / (last.at - events[0].at);
  assert.ok(seen < 1.2 * rate && seen > 0.1 * rate, `${seen} B/s seen, the server paced ${rate}`);
  // Once the rate has a few hundred ms to go on, it is that pace, and the time left follows.
  const settled = events.filter((e) => e.at - events[0].at > 300 && e.loaded < e.total);
  assert.ok(settled.length > 3, `${settled.length} events after 300 ms`);
  for (const e of settled) {
    assert.ok(e.bytesPerSecond > 0.5 * seen && e.bytesPerSecond < 2 * seen, `rate ${e.bytesPerSecond} B/s against ${seen} seen`);
    const left = (e.total - e.loaded) / seen;
    assert.ok(Math.abs(e.secondsLeft - left) < 0.6 * left + 0.1, `${e.secondsLeft} s left with ${e.total - e.loaded} bytes to go at ${seen} B/s`);
  }
  assert.equal(last.loaded, last.total);
  assert.equal(last.secondsLeft, 0);
  const mid = settled[settled.length >> 1];
  console.log(`progress: ${events.length} events at ${Math.round(seen)} B/s (server pace ${rate}); mid-download ${mid.bytesPerSecond} B/s, ${mid.secondsLeft.toFixed(2)} s left (${mid.loaded}/${mid.total} bytes); ends at ${last.secondsLeft} s left`);
});

test('a cut-off download that does not fit the quota says how much it still needs', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  server.dropAfter(weights, 600_000);
  assert.match((await load(browser.page, { urls: model.urls })).error ?? '', /was cut off/);
  const held = weightsEntry(await listed()).bytes;
  // tests/browser/fake-quota-worker.js: a browser whose estimate says 0.2 MB are free.
  const r = await load(browser.page, { urls: model.urls }, { workerUrl: '/tests/browser/fake-quota-worker.js' });
  const still = ((size - held) / 1e6).toFixed(1).replace('.', '\\.');
  assert.match(r.error ?? '', new RegExp(`^true storage quota exceeded: http\\S+/model\\.safetensors is 1\\.0 MB, ${still} MB of it not yet cached, but only 0\\.2 MB of browser storage is free; `));
  assert.equal(weightsEntry(await listed()).bytes, held, 'the held parts are kept');
  console.log(`quota: "${r.error.slice(5)}"`);
});

/** The files in tandem's OPFS folder, as `[name, bytes]` (none when it does not exist yet). */
const opfsFiles = () => browser.page.evaluate(async () => {
  const root = await navigator.storage.getDirectory();
  let dir;
  try {
    dir = await root.getDirectoryHandle('tandem-models-v1');
  } catch {
    return [];
  }
  const out = [];
  for await (const [name, handle] of dir.entries()) out.push([name, (await handle.getFile()).size]);
  return out;
});
const clearOpfs = () => browser.page.evaluate(async () => {
  const root = await navigator.storage.getDirectory();
  await root.removeEntry('tandem-models-v1', { recursive: true }).catch(() => {});
});

test('a large file goes to OPFS: cut off, it resumes from its flushed parts, is checked, listed and deleted', { timeout: 240_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  await clearOpfs();
  // The 1 MB weights count as large here; the config and tokenizer stay in the Cache API.
  const options = { opfsMinBytes: 500_000 };
  server.dropAfter(weights, 600_000);
  const cut = await load(browser.page, { urls: model.urls }, options);
  assert.match(cut.error ?? '', /^true download of http\S+\/model\.safetensors was cut off after \d+\.\d MB of 1\.0 MB: .+; the 0\.\d MB in the browser cache are kept and the next load resumes from there$/);
  const partial = weightsEntry(await listed());
  const held = Math.floor(600_000 / PART) * PART;
  assert.deepEqual(partial, { url: `${server.origin}${weights}`, bytes: held, total: size, partial: true });
  const keys = await browser.page.evaluate(async () => (await (await caches.open('tandem-models-v1')).keys()).map((r) => r.url));
  assert.ok(!keys.some((k) => k.includes('model.safetensors?tandem-part')), `weights parts in the Cache API: ${keys.join(', ')}`);
  const files = await opfsFiles();
  assert.equal(files.length, 1, JSON.stringify(files));
  // The name is the URL's SHA-256; the file may hold bytes past the last flushed part.
  assert.equal(files[0][0], createHash('sha256').update(`${server.origin}${weights}`).digest('hex'));
  assert.ok(files[0][1] >= held, JSON.stringify(files));

  await browser.page.reload();
  const logged = server.log.length;
  const resumed = await load(browser.page, { urls: model.urls, sha256: { 'model.safetensors': sha256 } }, options);
  assert.equal(resumed.error, undefined);
  assert.deepEqual(resumed.tokens, reference);
  const rest = server.log.slice(logged).filter((e) => e.path === weights);
  assert.deepEqual(rest, [{ path: weights, range: `bytes=${held}-`, status: 206, bytes: size - held }]);
  assert.deepEqual(weightsEntry(await listed()), { url: `${server.origin}${weights}`, bytes: size });
  assert.deepEqual((await opfsFiles()).map(([, bytes]) => bytes), [size]);

  // Cached: no request for the weights, read back from OPFS, and a wrong digest is refused.
  const again = await load(browser.page, { urls: model.urls }, options);
  assert.deepEqual(again.tokens, reference);
  assert.equal(server.log.slice(logged).filter((e) => e.path === weights).length, 1, 'the cached weights were downloaded again');
  const wrong = await load(browser.page, { urls: model.urls, sha256: { 'model.safetensors': '0'.repeat(64) } }, options);
  assert.match(wrong.error ?? '', /failed its check: sha256 [0-9a-f]{64}, expected 0{64}; removed it from the browser cache/);
  assert.deepEqual(await opfsFiles(), [], 'the file that failed its check is still there');

  // Downloaded whole again, then deleted through the page's API.
  const whole = await load(browser.page, { urls: model.urls }, options);
  assert.deepEqual(whole.tokens, reference);
  assert.equal((await opfsFiles()).length, 1);
  const deleted = await browser.page.evaluate(async (url) => (await import('/js/index.js')).deleteCachedModel(url), weights);
  assert.equal(deleted, true);
  assert.deepEqual(await opfsFiles(), []);
  assert.equal(weightsEntry(await listed()), undefined);
  console.log(`opfs: cut at ${held} flushed bytes of ${size}; resumed with "${rest[0].range}"; read back from OPFS with tokens matching the reference; a wrong sha256 removed it; deleteCachedModel removed the file`);
});

test('a shared engine reads a file stored in OPFS, and downloads large files into the Cache API (no sync handles there)', { timeout: 240_000 }, async (t) => {
  if (skip) return skipped(t);
  await clearCache();
  await clearOpfs();
  const options = { opfsMinBytes: 500_000 };
  const stored = await load(browser.page, { urls: model.urls }, options);
  assert.deepEqual(stored.tokens, reference);
  assert.equal((await opfsFiles()).length, 1);
  const before = server.requests.get(weights);
  const shared = { ...options, shared: true, sharedGraceMs: 0 };
  const read = await load(browser.page, { urls: model.urls }, shared);
  assert.equal(read.error, undefined);
  assert.deepEqual(read.tokens, reference);
  assert.equal(server.requests.get(weights), before, 'the shared engine downloaded the weights again');

  await clearCache();
  await clearOpfs();
  const fetched = await load(browser.page, { urls: model.urls }, shared);
  assert.deepEqual(fetched.tokens, reference);
  assert.equal(server.requests.get(weights), before + 1);
  assert.deepEqual(await opfsFiles(), []);
  const keys = await browser.page.evaluate(async () => (await (await caches.open('tandem-models-v1')).keys()).map((r) => r.url));
  assert.equal(keys.filter((k) => k.includes('model.safetensors?tandem-part')).length, Math.ceil(size / PART));
  console.log(`opfs: a shared engine read the OPFS copy (no request), and downloaded into ${Math.ceil(size / PART)} Cache API parts`);
});
