// `npm run bench:browser -- --tabs 3`: several tabs of one origin, each sending a request at the
// same moment, with (a) one engine shared by every tab (`shared: true`, a SharedWorker) against
// (b) an engine per tab (a dedicated worker each). Per configuration: the aggregate output
// tok/s over the tabs (every tab's tokens over the time from the first request sent to the last
// one done), each tab's decode rate and first token, and memory two ways:
//  - the engines' own account (`engine.stats()`: weights, KV pool, scratch; and the wasm memory
//    each engine's worker grew to while loading), summed over the distinct engines;
//  - the proportional set size (PSS) of the browser's whole process tree (browser-memory.mjs)
//    after the loads and at its peak while the tabs generate (sampled every 250 ms).
//    CDP's Performance.getMetrics reports one page's JS heap, not its workers';
//    performance.measureUserAgentSpecificMemory() needs a cross-origin-isolated page
//    (COOP + COEP headers), which the demo server does not send, and may wait for a GC.

import { existsSync } from 'node:fs';
import { openBrowser } from '../tests/browser/harness.mjs';
import { median } from './stats.mjs';
import { browserMemory } from './browser-memory.mjs';

/** One request per tab: different prompts, so that no tab reuses another's prompt in the KV cache. */
export const TAB_REQUESTS = {
  stories260K: ['Once upon a time', 'The little dog', 'Lily saw a'].map((prompt) => ({ prompt })),
  smollm2: ['What is the capital of France?', 'Name three colors of the rainbow.', 'Why is the sky blue?'].map((q) => ({
    messages: [{ role: 'user', content: q }],
  })),
};

const MODES = [
  { name: 'shared', shared: true, describe: 'one engine in a SharedWorker for every tab' },
  { name: 'per-tab', shared: false, describe: 'an engine per tab, each in its dedicated worker' },
];

/** In a tab: loads `window.engine`; what it says of itself. */
async function loadInTab(page, source, backend, shared) {
  return page.evaluate(
    async ({ source, backend, shared }) => {
      const { createEngine } = await import('/js/index.js');
      const t0 = performance.now();
      window.engine = await createEngine(source, { backend, shared });
      return {
        load_ms: performance.now() - t0,
        shared: engine.shared,
        fallback_reason: engine.fallbackReason,
        backend: engine.info.backend,
        wasm_memory_bytes: engine.info.wasm_memory_bytes,
        max_seqs: engine.info.model?.max_seqs ?? null,
      };
    },
    { source, backend, shared },
  );
}

/** In a tab: runs `request` greedily for `tokens` tokens; wall-clock times (Date.now(), the
 * same clock in every tab) and the engine's usage. */
function generateInTab(page, request, tokens) {
  return page.evaluate(
    async ({ request, tokens }) => {
      const options = { max_tokens: tokens, temperature: 0, ignore_eos: true };
      const start = Date.now();
      let first = null;
      let text = '';
      let usage;
      if (request.messages) {
        const chunks = await engine.chat.completions.create({ messages: request.messages, stream: true, ...options });
        for await (const chunk of chunks) {
          if (chunk.usage) usage = chunk.usage;
          const piece = chunk.choices[0]?.delta?.content;
          if (piece) {
            first ??= Date.now();
            text += piece;
          }
        }
      } else {
        const stream = engine.generate(request.prompt, options);
        for await (const piece of stream) {
          first ??= Date.now();
          text += piece;
        }
        usage = await stream.usage;
      }
      return { start, first, end: Date.now(), usage, text };
    },
    { request, tokens },
  );
}

/** One run: `tabs` tabs in a fresh browser profile, loaded one after another, then generating at once. */
async function runTabs(origin, model, requests, backend, mode, tokens) {
  const browser = await openBrowser(origin);
  const context = browser.page.context();
  try {
    const pages = [browser.page];
    while (pages.length < requests.length) {
      const page = await context.newPage();
      await page.goto(`${origin}/tests/browser/page.html`);
      pages.push(page);
    }
    const loads = [];
    for (const page of pages) loads.push(await loadInTab(page, model.source, backend, mode.shared));
    const notShared = loads.find((l) => l.shared !== mode.shared);
    if (notShared) throw new Error(`asked shared: ${mode.shared}, got ${notShared.shared} (${notShared.fallback_reason})`);
    const idle = browserMemory(browser.dir);
    let peak = idle;
    const sampler = setInterval(() => {
      const m = browserMemory(browser.dir);
      if (m.total > peak.total) peak = m;
    }, 250);
    let results;
    try {
      results = await Promise.all(pages.map((page, i) => generateInTab(page, requests[i], tokens)));
    } finally {
      clearInterval(sampler);
    }
    const after = browserMemory(browser.dir);
    if (after.total > peak.total) peak = after;
    for (const [i, r] of results.entries()) {
      if (r.usage.completion_tokens !== tokens) throw new Error(`tab ${i} generated ${r.usage.completion_tokens} tokens, asked for ${tokens}`);
    }
    // Each distinct engine once: a shared one answers the same from every tab.
    const engines = mode.shared ? [pages[0]] : pages;
    const engineStats = await Promise.all(engines.map((p) => p.evaluate(() => engine.stats())));
    const worker = await pages[0].evaluate(() => engine.workerStats());
    if (mode.shared && (worker.loads !== 1 || worker.clients !== pages.length)) {
      throw new Error(`the shared engine has ${worker.clients} clients and ${worker.loads} loads: ${JSON.stringify(worker)}`);
    }
    const errors = browser.logs.filter((l) => l.startsWith('[pageerror]'));
    if (errors.length) throw new Error(errors.join('\n'));
    const sum = (xs, key) => xs.reduce((n, x) => n + x[key], 0);
    const t0 = Math.min(...results.map((r) => r.start));
    const t1 = Math.max(...results.map((r) => r.end));
    const completion = sum(results.map((r) => r.usage), 'completion_tokens');
    return {
      engines: engines.length,
      aggregate_tokens_per_second: (completion * 1000) / (t1 - t0),
      wall_ms: t1 - t0,
      completion_tokens: completion,
      tabs: results.map((r, i) => ({
        load_ms: loads[i].load_ms,
        first_token_ms: r.first - r.start,
        decode_tokens_per_second: r.usage.decode_tokens_per_second,
        prefill_ms: r.usage.prefill_ms,
        prompt_tokens: r.usage.prompt_tokens,
      })),
      texts: results.map((r) => r.text),
      backend: loads[0].backend,
      max_seqs: loads[0].max_seqs,
      shared_steps: mode.shared ? worker.sharedSteps : null,
      steps: mode.shared ? worker.steps : null,
      weights_bytes: sum(engineStats, 'weights_bytes'),
      kv_bytes_total: sum(engineStats, 'kv_bytes_total'),
      scratch_bytes: sum(engineStats, 'scratch_bytes'),
      wasm_memory_bytes: sum(mode.shared ? [loads[0]] : loads, 'wasm_memory_bytes'),
      pss_idle: idle,
      pss_peak: peak,
    };
  } finally {
    await browser.close();
  }
}

/** Median [min-max]; two decimals for rates under 10 (SwiftShader's), one otherwise. */
const range = (xs, digits = Math.max(...xs) < 10 ? 2 : 1) => {
  const m = median(xs).toFixed(digits);
  const lo = Math.min(...xs).toFixed(digits);
  const hi = Math.max(...xs).toFixed(digits);
  return lo === hi ? m : `${m} [${lo}-${hi}]`;
};
const mb = (b) => (b / 2 ** 20).toFixed(1);

/**
 * The tabs case for every model and backend of `opts`; appends to `report.tabs` and
 * `report.skipped`, prints a table per model and backend and the shared / per-tab ratios.
 */
export async function benchTabs(origin, models, opts, report, table) {
  report.tabs = [];
  for (const name of opts.models) {
    const model = models[name];
    const base = TAB_REQUESTS[name];
    if (!base) {
      console.log(`SKIP ${name}: no per-tab requests for it (the tabs case knows ${Object.keys(TAB_REQUESTS).join(', ')})`);
      report.skipped.push({ model: name, reason: 'no per-tab requests' });
      continue;
    }
    const missing = model.files().filter((f) => !existsSync(f));
    if (missing.length) {
      console.log(`SKIP ${name}: missing ${missing.join(', ')}`);
      report.skipped.push({ model: name, reason: `missing ${missing.join(', ')}` });
      continue;
    }
    const requests = Array.from({ length: opts.tabs }, (_, i) => base[i % base.length]);
    for (const backend of opts.backends) {
      const byMode = new Map(MODES.map((m) => [m.name, []]));
      let failed = false;
      // The modes alternate, so that a slow stretch of the machine hits both.
      for (let i = 0; i < opts.repeat && !failed; i++) {
        for (const mode of MODES) {
          process.stdout.write(`  ${name} ${backend} ${opts.tabs} tabs ${mode.name} run ${i + 1}/${opts.repeat} ... `);
          try {
            const r = await runTabs(origin, model, requests, backend, mode, opts.tokens);
            byMode.get(mode.name).push(r);
            console.log(`${r.aggregate_tokens_per_second.toFixed(1)} tok/s over ${opts.tabs} tabs, PSS peak ${mb(r.pss_peak.total)} MiB`);
          } catch (e) {
            console.log('failed');
            console.log(`FAILED ${name} ${backend} tabs ${mode.name}: ${e.message}`);
            report.skipped.push({ model: name, backend: `${backend} tabs ${mode.name}`, reason: `failed: ${e.message}` });
            failed = true;
            break;
          }
        }
      }
      if (failed) continue;
      const entry = { model: name, backend, tabs: opts.tabs, tokens: opts.tokens, requests, modes: {} };
      for (const mode of MODES) {
        const runs = byMode.get(mode.name);
        entry.modes[mode.name] = {
          describe: mode.describe,
          adapter: runs[0].backend.name,
          engines: runs[0].engines,
          max_seqs: runs[0].max_seqs,
          aggregate_tokens_per_second: runs.map((r) => r.aggregate_tokens_per_second),
          texts: runs[0].texts,
          runs,
        };
      }
      report.tabs.push(entry);
      printTabs(entry, table);
    }
  }
}

function printTabs(entry, table) {
  const { shared, 'per-tab': perTab } = entry.modes;
  console.log('');
  console.log(`${entry.model} ${entry.backend} (${shared.adapter}), ${entry.tabs} tabs sending one request each at once, ${entry.tokens} tokens each:`);
  const rows = [['config', 'engines', 'aggregate tok/s', 'per-tab decode tok/s', 'first token ms', 'load ms (tab 1 / others)', 'weights+KV MiB', 'scratch MiB', 'wasm memory MiB', 'PSS after load MiB', 'PSS peak MiB']];
  for (const name of ['shared', 'per-tab']) {
    const m = entry.modes[name];
    const runs = m.runs;
    const tabs = runs.flatMap((r) => r.tabs);
    const r0 = runs[0];
    rows.push([
      name,
      m.engines,
      range(m.aggregate_tokens_per_second),
      range(tabs.map((t) => t.decode_tokens_per_second)),
      range(tabs.map((t) => t.first_token_ms), 0),
      `${range(runs.map((r) => r.tabs[0].load_ms), 0)} / ${range(runs.flatMap((r) => r.tabs.slice(1).map((t) => t.load_ms)), 0)}`,
      mb(r0.weights_bytes + r0.kv_bytes_total),
      mb(r0.scratch_bytes),
      mb(r0.wasm_memory_bytes),
      range(runs.map((r) => r.pss_idle.total / 2 ** 20)),
      range(runs.map((r) => r.pss_peak.total / 2 ** 20)),
    ]);
  }
  console.log(table(rows));
  const ratio = (f) => (median(shared.runs.map(f)) / median(perTab.runs.map(f))).toFixed(2);
  console.log(
    `shared / per-tab: aggregate tok/s ${ratio((r) => r.aggregate_tokens_per_second)}x, weights+KV ${ratio((r) => r.weights_bytes + r.kv_bytes_total)}x, ` +
      `wasm memory ${ratio((r) => r.wasm_memory_bytes)}x, PSS after load ${ratio((r) => r.pss_idle.total)}x, PSS peak ${ratio((r) => r.pss_peak.total)}x`,
  );
  const byType = (m) => Object.entries(m.byType).map(([t, b]) => `${t} ${mb(b)}`).join(', ');
  for (const name of ['shared', 'per-tab']) console.log(`  ${name} PSS peak by process type (MiB, run 1): ${byType(entry.modes[name].runs[0].pss_peak)}`);
  const same = shared.texts.every((t, i) => t === perTab.texts[i]);
  console.log(`  each tab's text, shared against per-tab: ${same ? 'identical' : 'DIFFERENT'}`);
  if (shared.runs[0].shared_steps !== null) console.log(`  shared engine: ${shared.runs[0].shared_steps} of ${shared.runs[0].steps} steps held more than one tab's requests (run 1)`);
  if (!same) process.exitCode = 1;
}
