#!/usr/bin/env node
// `npm run bench:storage`: where a large model file is better kept in the browser, the Cache API
// (in parts, as js/cache.js stores downloads) or the Origin Private File System. In headless
// Chromium (the browser tests' flags), in a dedicated worker as tandem's downloads run, per
// size and method: the time to write a stream of random bytes (1 MiB chunks) and to read it back
// into one ArrayBuffer (8 MiB steps, as the engine's load takes it), the browser's memory
// (PSS of its process tree, browser-memory.mjs) above what it held before each step, at its peak
// (sampled every 100 ms), and the profile's size on disk after the write.
//
//   npm run bench:storage -- [--sizes 64,256,512] [--methods cache,opfs-sync,opfs-writable]
//                            [--part-mib 32] [--repeat 3] [--engine [--backend cpu|webgpu]]
//                            [--json FILE]
//
// Methods: cache (one Cache API entry per part, each put as its bytes arrive), opfs-sync (a
// FileSystemSyncAccessHandle writing each chunk at its offset; reads into the buffer directly),
// opfs-writable (createWritable(), the stream piped in; read back through getFile().stream()).
// Each run is a fresh profile; the OS page cache is not dropped, so reads come from memory on
// both sides, as a model read back soon after its download does.
//
// --engine: instead, tandem itself: SmolLM2-135M Q4_1 (from tandem's model cache) loaded on
// `--backend` (default cpu) twice in one profile, stored by js/cache.js in the Cache API (the
// default) or in OPFS (`opfsMinBytes: 64 MiB`); the second load (a returning
// visitor: a new page, the model cached) is timed from createEngine() to the engine loaded, and
// its 'cache' stage (the model's bytes read from the store and pushed into the engine).

import { execFileSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { modelRoots, startDemoServer } from './serve-demo.mjs';
import { chromiumPath, openBrowser } from '../tests/browser/harness.mjs';
import { browserMemory } from './browser-memory.mjs';
import { median } from './stats.mjs';

const METHODS = ['cache', 'opfs-sync', 'opfs-writable'];

function fail(message) {
  console.error(`bench-storage: ${message}`);
  process.exit(1);
}

function options() {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '64,256,512' },
      methods: { type: 'string', default: METHODS.join(',') },
      'part-mib': { type: 'string', default: '32' },
      repeat: { type: 'string', default: '3' },
      json: { type: 'string' },
      engine: { type: 'boolean', default: false },
      backend: { type: 'string', default: 'cpu' },
    },
  });
  const ints = (s, what) => s.split(',').map((x) => {
    const n = Number(x);
    if (!Number.isInteger(n) || n < 1) fail(`--${what}: '${x}' is not a positive integer`);
    return n;
  });
  const methods = values.methods.split(',');
  for (const m of methods) if (!METHODS.includes(m)) fail(`unknown method '${m}' (known: ${METHODS.join(', ')})`);
  if (!['cpu', 'webgpu'].includes(values.backend)) fail(`--backend must be cpu or webgpu, not '${values.backend}'`);
  return { sizes: ints(values.sizes, 'sizes'), methods, partMiB: ints(values['part-mib'], 'part-mib')[0], repeat: ints(values.repeat, 'repeat')[0], json: values.json ?? null, engine: values.engine, backend: values.backend };
}

const MiB = 2 ** 20;

/** Runs `op` in the page's worker while sampling the browser's memory; its time and peak growth. */
async function step(browser, message) {
  const before = browserMemory(browser.dir);
  let peak = before;
  const sampler = setInterval(() => {
    const m = browserMemory(browser.dir);
    if (m.total > peak.total) peak = m;
  }, 100);
  let result;
  try {
    result = await browser.page.evaluate((m) => window.storageOp(m), message);
  } finally {
    clearInterval(sampler);
  }
  if (result.error) throw new Error(result.error);
  // Which process grew most: the worker's renderer, or the storage service's utility process.
  const growth = Object.fromEntries(Object.entries(peak.byType).map(([t, b]) => [t, b - (before.byType[t] ?? 0)]));
  return { ms: result.ms, usage: result.usage, pss_growth: peak.total - before.total, pss_growth_by_type: growth };
}

function duBytes(dir) {
  return Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0]);
}

async function runOnce(origin, method, bytes, partBytes) {
  const browser = await openBrowser(origin);
  try {
    await browser.page.goto(`${origin}/scripts/bench-storage.html`);
    await browser.page.waitForFunction(() => window.storageReady);
    const diskBefore = duBytes(browser.dir);
    const write = await step(browser, { op: 'write', method, bytes, partBytes });
    const disk = duBytes(browser.dir) - diskBefore;
    const read = await step(browser, { op: 'read', method, bytes, partBytes });
    await step(browser, { op: 'clear' });
    return { write, read, disk_bytes: disk };
  } finally {
    await browser.close();
  }
}

const fmt = (xs, digits = 0) => {
  const [m, lo, hi] = [median(xs), Math.min(...xs), Math.max(...xs)].map((x) => x.toFixed(digits));
  return lo === hi ? m : `${m} [${lo}-${hi}]`;
};

function table(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  return rows.map((r) => r.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd()).join('\n');
}

const MODEL = 'SmolLM2-135M-Instruct.Q4_1.gguf';

/** One createEngine() in `page`: its time and its 'cache' stage's (first to last event). */
function timedLoad(page, opfsMinBytes, backend) {
  return page.evaluate(async ({ url, opfsMinBytes, backend }) => {
    const { createEngine } = await import('/js/index.js');
    const cacheEvents = [];
    const t0 = performance.now();
    const engine = await createEngine({ url }, { backend, opfsMinBytes, onProgress: (p) => p.stage === 'cache' && cacheEvents.push(performance.now()) });
    const ms = performance.now() - t0;
    await engine.unload();
    const root = await navigator.storage.getDirectory();
    let opfsFiles = 0;
    try {
      for await (const _ of (await root.getDirectoryHandle('tandem-models-v1')).keys()) opfsFiles++;
    } catch {
      // No folder: nothing in OPFS.
    }
    return { ms, cache_stage_ms: cacheEvents.length ? cacheEvents.at(-1) - cacheEvents[0] : null, opfs_files: opfsFiles };
  }, { url: `/models/${MODEL}`, opfsMinBytes, backend });
}

async function benchEngine(opts, report) {
  if (!existsSync(join(modelRoots()[0], MODEL))) fail(`${MODEL} is not in ${modelRoots()[0]} (\`tandem inspect\` fetches it)`);
  const stores = { cache: undefined, opfs: 64 << 20 };
  const byStore = new Map(Object.keys(stores).map((k) => [k, []]));
  const server = await startDemoServer({ port: 0 });
  try {
    for (let i = 0; i < opts.repeat; i++) {
      for (const [store, opfsMinBytes] of Object.entries(stores)) {
        process.stdout.write(`  ${MODEL} in ${store} run ${i + 1}/${opts.repeat} ... `);
        const browser = await openBrowser(server.origin);
        try {
          const first = await timedLoad(browser.page, opfsMinBytes, opts.backend);
          await browser.page.goto(`${server.origin}/tests/browser/page.html`);
          const second = await timedLoad(browser.page, opfsMinBytes, opts.backend);
          if ((second.opfs_files > 0) !== (store === 'opfs')) throw new Error(`stored in the wrong place: ${JSON.stringify(second)}`);
          byStore.get(store).push({ first, second });
          console.log(`first load ${first.ms.toFixed(0)} ms, cached load ${second.ms.toFixed(0)} ms (cache stage ${second.cache_stage_ms.toFixed(0)} ms)`);
        } finally {
          await browser.close();
        }
      }
    }
  } finally {
    await server.close();
  }
  console.log('');
  const rows = [['store', 'first load ms (download)', 'cached load ms', "cached load's cache stage ms"]];
  for (const [store, runs] of byStore) {
    report.results.push({ model: MODEL, store, runs });
    rows.push([store, fmt(runs.map((r) => r.first.ms)), fmt(runs.map((r) => r.second.ms)), fmt(runs.map((r) => r.second.cache_stage_ms))]);
  }
  console.log(table(rows));
  const ratio = (f) => (median(byStore.get('cache').map(f)) / median(byStore.get('opfs').map(f))).toFixed(2);
  console.log(`cache / opfs (medians): cached load ${ratio((r) => r.second.ms)}x, its cache stage ${ratio((r) => r.second.cache_stage_ms)}x`);
}

async function main() {
  const opts = options();
  const report = {
    command: `npm run bench:storage -- ${process.argv.slice(2).join(' ')}`.trim(),
    date: new Date().toISOString(),
    host: { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', loadavg: loadavg().map((x) => +x.toFixed(2)) },
    part_bytes: opts.partMiB * MiB,
    results: [],
  };
  console.log(`tandem storage benchmark: ${report.command}`);
  console.log(`Chromium ${chromiumPath} (headless); host: ${report.host.cpus} x ${report.host.cpu}, load average ${report.host.loadavg.join(' ')}`);
  if (opts.engine) {
    console.log(`each run: a fresh profile; ${MODEL} loaded on ${opts.backend}, then loaded again from a new page; ${opts.repeat} run(s): median [min-max]`);
    await benchEngine(opts, report);
    if (opts.json) {
      writeFileSync(opts.json, JSON.stringify(report, null, 2) + '\n');
      console.log(`json: ${opts.json}`);
    }
    return;
  }
  console.log(`each run: a fresh profile; a stream of random bytes in 1 MiB chunks written, then read back into one ArrayBuffer; ${opts.repeat} run(s): median [min-max]`);
  const server = await startDemoServer({ port: 0 });
  try {
    for (const mib of opts.sizes) {
      const byMethod = new Map(opts.methods.map((m) => [m, []]));
      // Methods alternate within a size, so a slow stretch of the machine hits each.
      for (let i = 0; i < opts.repeat; i++) {
        for (const method of opts.methods) {
          process.stdout.write(`  ${mib} MiB ${method} run ${i + 1}/${opts.repeat} ... `);
          const r = await runOnce(server.origin, method, mib * MiB, opts.partMiB * MiB);
          byMethod.get(method).push(r);
          console.log(`write ${r.write.ms.toFixed(0)} ms, read ${r.read.ms.toFixed(0)} ms`);
        }
      }
      for (const [method, runs] of byMethod) report.results.push({ mib, method, runs });
    }
  } finally {
    await server.close();
  }
  console.log('');
  const rows = [['size', 'method', 'write ms', 'write MB/s', 'read ms', 'read MB/s', 'PSS growth write MiB', 'PSS growth read MiB', 'on disk MiB']];
  for (const { mib, method, runs } of report.results) {
    const mbps = (ms) => (mib * MiB) / 1e6 / (ms / 1000);
    rows.push([
      `${mib} MiB`,
      method,
      fmt(runs.map((r) => r.write.ms)),
      fmt(runs.map((r) => mbps(r.write.ms))),
      fmt(runs.map((r) => r.read.ms)),
      fmt(runs.map((r) => mbps(r.read.ms))),
      fmt(runs.map((r) => r.write.pss_growth / MiB)),
      fmt(runs.map((r) => r.read.pss_growth / MiB)),
      fmt(runs.map((r) => r.disk_bytes / MiB)),
    ]);
  }
  console.log(table(rows));
  console.log('  PSS growth: the peak of the browser\'s process tree during the step over its size just before (the read includes the ArrayBuffer of the file\'s size)');
  for (const mib of opts.sizes) {
    const base = report.results.find((r) => r.mib === mib && r.method === 'cache');
    if (!base) continue;
    for (const r of report.results.filter((x) => x.mib === mib && x.method !== 'cache')) {
      const ratio = (k) => (median(base.runs.map((x) => x[k].ms)) / median(r.runs.map((x) => x[k].ms))).toFixed(2);
      console.log(`${mib} MiB ${r.method} against cache: write ${ratio('write')}x as fast, read ${ratio('read')}x as fast (medians)`);
    }
  }
  for (const r of report.results) {
    const g = r.runs[0];
    const top = (m) => Object.entries(m).sort((a, b) => b[1] - a[1]).slice(0, 2).map(([t, b]) => `${t} ${(b / MiB).toFixed(0)}`).join(', ');
    console.log(`  ${r.mib} MiB ${r.method} run 1, growth by process type (MiB): write ${top(g.write.pss_growth_by_type)}; read ${top(g.read.pss_growth_by_type)}`);
  }
  if (opts.json) {
    writeFileSync(opts.json, JSON.stringify(report, null, 2) + '\n');
    console.log(`json: ${opts.json}`);
  }
}

await main();
