#!/usr/bin/env node
// `npm run bench:browser`: the npm package in headless Chromium (the browser tests' flags, so
// WebGPU is SwiftShader on a machine without a GPU), per model and backend: time from page open
// to the engine loaded and to the first streamed token, prefill, and decode tok/s over a fixed
// number of tokens; plus the .wasm's size raw and gzipped. Builds nothing: run `npm run build`
// first.
//
//   npm run bench:browser -- [--models stories260K,smollm2,smollm2-quote] [--backends webgpu,cpu]
//                            [--tokens 64] [--repeat 3] [--speculate] [--tabs N] [--json FILE]
//
// --speculate: each model and backend runs plain and with prompt-lookup speculation
// (`speculate: 'ngram'`), alternately, and the speed-up is printed. smollm2-quote asks the model
// to repeat bench/spec-text.txt word for word (the high-acceptance case; `tandem bench
// --speculate ngram --spec-task quote` is the native side).
//
// --tabs N: instead of one page per run, N tabs of one origin each send a request at once,
// with one engine shared by the tabs (`shared: true`) and with an engine per tab, alternately:
// aggregate tok/s and memory of each (scripts/bench-tabs.mjs says how memory is measured).

import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync, constants as zlib } from 'node:zlib';
import { modelRoots, repoRoot, startDemoServer } from './serve-demo.mjs';
import { chromiumPath, openBrowser, sharedModels } from '../tests/browser/harness.mjs';
import { benchTabs } from './bench-tabs.mjs';

const STORIES = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'];
const SMOLLM2 = 'SmolLM2-135M-Instruct.Q4_1.gguf';

/** The benchmark's models: where their files are looked for, and the request each one runs. */
const MODELS = {
  stories260K: {
    files: () => STORIES.map((n) => join(sharedModels, 'stories260K', n)),
    source: { urls: STORIES.map((n) => `/models/stories260K/${n}`) },
    request: { prompt: 'Once upon a time' },
    describe: 'BOS + "Once upon a time"',
  },
  smollm2: {
    // The model cache, as the demo server's /models/ looks it up first.
    files: () => [join(modelRoots()[0], SMOLLM2)],
    source: { url: `/models/${SMOLLM2}` },
    request: { messages: [{ role: 'user', content: 'What is the capital of France?' }] },
    describe: 'chat: "What is the capital of France?"',
  },
};
MODELS['smollm2-quote'] = {
  files: MODELS.smollm2.files,
  source: MODELS.smollm2.source,
  request: { messages: [{ role: 'user', content: `${readFileSync(join(repoRoot, 'bench/spec-text.txt'), 'utf8').trimEnd()}\n\nRepeat the text above word for word.` }] },
  describe: 'chat: bench/spec-text.txt + "Repeat the text above word for word."',
};
const BACKENDS = ['webgpu', 'cpu'];
/** One run may take this long before it counts as hung. */
const RUN_TIMEOUT_MS = 15 * 60_000;

function fail(message) {
  console.error(`bench-browser: ${message}`);
  process.exit(1);
}

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        models: { type: 'string', default: Object.keys(MODELS).join(',') },
        backends: { type: 'string', default: BACKENDS.join(',') },
        tokens: { type: 'string', default: '64' },
        repeat: { type: 'string', default: '3' },
        json: { type: 'string' },
        speculate: { type: 'boolean', default: false },
        tabs: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    fail(e.message);
  }
  if (values.help) {
    console.log(readFileSync(new URL(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
    process.exit(0);
  }
  const list = (s, known, what) => {
    const items = s.split(',').map((x) => x.trim()).filter(Boolean);
    const byLower = new Map(known.map((k) => [k.toLowerCase(), k]));
    return items.map((x) => byLower.get(x.toLowerCase()) ?? fail(`unknown ${what} '${x}' (known: ${known.join(', ')})`));
  };
  const count = (s, what, min) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < min) fail(`--${what} must be an integer >= ${min}, got '${s}'`);
    return n;
  };
  return {
    models: list(values.models, Object.keys(MODELS), 'model'),
    backends: list(values.backends, BACKENDS, 'backend'),
    tokens: count(values.tokens, 'tokens', 2),
    repeat: count(values.repeat, 'repeat', 1),
    json: values.json ?? null,
    speculate: values.speculate,
    tabs: values.tabs === undefined ? null : count(values.tabs, 'tabs', 2),
  };
}

function wasmSize() {
  const path = join(repoRoot, 'pkg/tandem_web_bg.wasm');
  const bytes = readFileSync(path);
  return { path: 'pkg/tandem_web_bg.wasm', raw: bytes.byteLength, gzip9: gzipSync(bytes, { level: zlib.Z_BEST_COMPRESSION }).byteLength };
}

/** One page load in a fresh browser (fresh profile: empty Cache API and HTTP cache). */
async function runOnce(origin, model, backend, tokens, speculate) {
  const browser = await openBrowser(origin);
  try {
    const run = { source: model.source, backend, tokens, speculate, ...model.request };
    const { page } = browser;
    await page.goto(`${origin}/scripts/bench-browser.html?run=${encodeURIComponent(JSON.stringify(run))}`);
    await page.waitForFunction(() => window.benchResult, null, { timeout: RUN_TIMEOUT_MS, polling: 100 });
    const result = await page.evaluate(() => window.benchResult);
    if (result.error) throw new Error(result.error);
    const errors = browser.logs.filter((l) => l.startsWith('[pageerror]'));
    if (errors.length) throw new Error(errors.join('\n'));
    const u = result.usage;
    if (u.completion_tokens !== tokens) {
      throw new Error(`generated ${u.completion_tokens} tokens, asked for ${tokens} (finish: ${u.finish_detail})`);
    }
    return {
      load_ms: result.marks.loaded_ms,
      first_token_ms: result.marks.first_token_ms,
      prefill_ms: u.prefill_ms,
      prompt_tokens: u.prompt_tokens,
      decode_tokens_per_second: u.decode_tokens_per_second,
      completion_tokens: u.completion_tokens,
      backend: result.backend,
      draft_tokens: u.draft_tokens,
      accepted_tokens: u.accepted_tokens,
      engine_backend: result.engine.backend,
      weight_bytes: result.engine.model.weight_bytes,
      page_adapter: result.adapter,
      text: result.text,
    };
  } finally {
    await browser.close();
  }
}

function stats(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2, min: s[0], max: s[s.length - 1] };
}

function fmt({ median, min, max }, digits = 0) {
  const f = (x) => x.toFixed(digits);
  return min === max ? f(median) : `${f(median)} [${f(min)}-${f(max)}]`;
}

function table(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  return rows.map((r) => r.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd()).join('\n');
}

async function browserVersion() {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ['--no-sandbox'] });
  try {
    return browser.version();
  } finally {
    await browser.close();
  }
}

async function main() {
  const opts = options();
  if (!existsSync(join(repoRoot, 'pkg/tandem_web_bg.wasm'))) fail('pkg/ is not built: run `npm run build` first (this program builds nothing)');
  if (!existsSync(chromiumPath)) fail(`Chromium not found at ${chromiumPath} (apt-get install -y chromium, or set TANDEM_CHROMIUM)`);
  try {
    await import('playwright-core');
  } catch {
    fail('playwright-core is not installed (npm install)');
  }

  const wasm = wasmSize();
  const report = {
    command: `npm run bench:browser -- ${process.argv.slice(2).join(' ')}`.trim(),
    date: new Date().toISOString(),
    browser: await browserVersion(),
    host: { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', loadavg: loadavg().map((x) => +x.toFixed(2)) },
    wasm,
    tokens: opts.tokens,
    repeat: opts.repeat,
    results: [],
    skipped: [],
  };
  console.log(`tandem browser benchmark: ${report.command}`);
  console.log(`browser: Chromium ${report.browser} (headless, ${chromiumPath}); host: ${report.host.cpus} x ${report.host.cpu}, load average ${report.host.loadavg.join(' ')}`);
  console.log(`${wasm.path}: ${wasm.raw} bytes raw, ${wasm.gzip9} bytes gzipped (zlib level 9)`);
  console.log(`each run: a fresh browser profile (nothing cached), times from navigation start; greedy, ${opts.tokens} tokens with ignore_eos; ${opts.repeat} run(s): median [min-max]`);

  const server = await startDemoServer({ port: 0 });
  if (opts.tabs) {
    try {
      await benchTabs(server.origin, MODELS, opts, report, table);
    } finally {
      await server.close();
    }
    for (const s of report.skipped) console.log(`not measured: ${s.model}${s.backend ? ` ${s.backend}` : ''}: ${s.reason}`);
    if (opts.json) {
      writeFileSync(opts.json, JSON.stringify(report, null, 2) + '\n');
      console.log(`json: ${opts.json}`);
    }
    if (!report.tabs.length) fail('nothing was measured');
    if (report.skipped.some((s) => s.backend)) process.exitCode = 1;
    return;
  }
  try {
    for (const name of opts.models) {
      const model = MODELS[name];
      const missing = model.files().filter((f) => !existsSync(f));
      if (missing.length) {
        const reason = `missing ${missing.join(', ')}`;
        console.log(`SKIP ${name}: ${reason}`);
        report.skipped.push({ model: name, reason });
        continue;
      }
      const modelBytes = model.files().reduce((n, f) => n + statSync(f).size, 0);
      for (const backend of opts.backends) {
        // With --speculate, plain and speculative runs alternate, so a slow stretch hits both.
        const variants = opts.speculate ? [undefined, 'ngram'] : [undefined];
        const byVariant = variants.map(() => []);
        let failed = false;
        for (let i = 0; i < opts.repeat && !failed; i++) {
          for (const [v, speculate] of variants.entries()) {
            const label = speculate ? `${backend}+${speculate}` : backend;
            process.stdout.write(`  ${name} ${label} run ${i + 1}/${opts.repeat} ... `);
            try {
              const r = await runOnce(server.origin, model, backend, opts.tokens, speculate);
              byVariant[v].push(r);
              const acc = speculate ? `, ${r.accepted_tokens}/${r.draft_tokens} drafts accepted` : '';
              console.log(`first token ${r.first_token_ms.toFixed(0)} ms, decode ${r.decode_tokens_per_second.toFixed(1)} tok/s${acc}`);
            } catch (e) {
              console.log('failed');
              console.log(`FAILED ${name} ${label}: ${e.message}`);
              report.skipped.push({ model: name, backend: label, reason: `failed: ${e.message}` });
              failed = true;
              break;
            }
          }
        }
        if (failed) continue;
        for (const [v, runs] of byVariant.entries()) {
          const speculation = variants[v] ?? null;
          const first = runs[0];
          const of = (key) => stats(runs.map((r) => r[key]));
          report.results.push({
            model: name,
            request: model.describe,
            model_bytes: modelBytes,
            weight_bytes: first.weight_bytes,
            backend: speculation ? `${backend}+${speculation}` : backend,
            speculation,
            draft_tokens: speculation ? runs.reduce((n, r) => n + r.draft_tokens, 0) : null,
            accepted_tokens: speculation ? runs.reduce((n, r) => n + r.accepted_tokens, 0) : null,
            adapter: first.backend,
            engine_backend: first.engine_backend,
            page_adapter: first.page_adapter,
            prompt_tokens: first.prompt_tokens,
            load_ms: of('load_ms'),
            first_token_ms: of('first_token_ms'),
            prefill_ms: of('prefill_ms'),
            decode_tokens_per_second: of('decode_tokens_per_second'),
            text: first.text,
            runs: runs.map(({ text, page_adapter, engine_backend, backend, weight_bytes, ...r }) => r),
          });
        }
      }
    }
  } finally {
    await server.close();
  }

  console.log('');
  if (!report.results.length) {
    for (const s of report.skipped) console.log(`not measured: ${s.model}${s.backend ? ` ${s.backend}` : ''}: ${s.reason}`);
    fail('nothing was measured');
  }
  const rows = [['model', 'backend', 'adapter', 'prompt', 'load ms', 'first token ms', 'prefill ms', 'decode tok/s', 'weights GB/s']];
  for (const r of report.results) {
    const gbps = { ...r.decode_tokens_per_second };
    for (const k of Object.keys(gbps)) gbps[k] = (gbps[k] * r.weight_bytes) / 1e9;
    rows.push([r.model, r.backend, r.adapter, `${r.prompt_tokens} tok`, fmt(r.load_ms), fmt(r.first_token_ms), fmt(r.prefill_ms, 1), fmt(r.decode_tokens_per_second, 1), fmt(gbps, 3)]);
  }
  console.log(table(rows));
  for (const r of report.results.filter((r) => r.speculation)) {
    const base = report.results.find((p) => p.model === r.model && !p.speculation && r.backend.startsWith(`${p.backend}+`));
    if (!base) continue;
    r.speedup = r.decode_tokens_per_second.median / base.decode_tokens_per_second.median;
    const same = r.text === base.text ? 'identical' : 'DIFFERENT';
    console.log(`${r.model} ${r.backend}: ${r.speedup.toFixed(2)}x plain decode (medians), ${r.accepted_tokens}/${r.draft_tokens} drafts accepted over the runs, output ${same}`);
    if (r.text !== base.text) process.exitCode = 1;
  }
  console.log(
    [
      'load: navigation start to createEngine() resolved (page scripts, wasm compile, model download and upload)',
      'first token: navigation start to the first streamed text',
      "prefill: the engine's time for the prompt step (on WebGPU it includes compiling each pipeline on first use)",
      "decode: the engine's rate over the tokens after the first; weights GB/s: weight bytes x decode tok/s",
    ].map((l) => `  ${l}`).join('\n'),
  );
  console.log('');
  const pageAdapter = report.results.find((r) => r.page_adapter)?.page_adapter ?? null;
  report.page_adapter = pageAdapter;
  console.log(`the page's WebGPU adapter: ${pageAdapter ? JSON.stringify(pageAdapter) : 'none'}`);
  for (const r of report.results) {
    const b = r.engine_backend;
    console.log(`${r.model} ${r.backend}: the engine reports backend ${b.kind} "${b.name}" (software ${b.software}, shader_f16 ${b.shader_f16})`);
  }
  // The greedy text, once per model when every backend agrees (they should).
  for (const name of new Set(report.results.map((r) => r.model))) {
    const rs = report.results.filter((r) => r.model === name);
    const head = `${name} (${rs[0].request}; ${(rs[0].model_bytes / 1e6).toFixed(1)} MB of files, ${(rs[0].weight_bytes / 1e6).toFixed(1)} MB of weights)`;
    const clip = (t) => JSON.stringify(t.length > 100 ? `${t.slice(0, 100)}...` : t);
    if (rs.every((r) => r.text === rs[0].text)) console.log(`${head}: ${clip(rs[0].text)}`);
    else for (const r of rs) console.log(`${head} on ${r.backend}: ${clip(r.text)}`);
  }
  for (const s of report.skipped) console.log(`not measured: ${s.model}${s.backend ? ` ${s.backend}` : ''}: ${s.reason}`);
  if (opts.json) {
    writeFileSync(opts.json, JSON.stringify(report, null, 2) + '\n');
    console.log(`json: ${opts.json}`);
  }
  if (report.skipped.some((s) => s.backend)) process.exitCode = 1;
}

await main();
