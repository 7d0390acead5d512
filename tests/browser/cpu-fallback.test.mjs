// The WASM CPU fallback's own kernels, in the page: the CPU backend's fast mode on one thread,
// built with WebAssembly SIMD (simd128), whose hand-written kernels exist only in the wasm
// build, so no native test runs them.
// - The shared conformance cases of every op against the CPU reference compiled to wasm
//   (same cases, same tolerances as the native harness).
// - Batch invariance: matmul and attention rows inside a batch equal, bit for bit, the same
//   rows alone.
// - The kernels' f16 scale conversion on every bit pattern (the cases' scales are ordinary).
// - A browser without WebAssembly SIMD (V8 without SSE4.1 turns it off) gets a clear error
//   from createEngine, not a failed compile deep in the worker.
//
// `npm run test:browser` builds pkg-conformance/ first (scripts/build-conformance.sh).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { browserSkipReason, chromiumPath, openBrowser, repoRoot, startServer, stories260K } from './harness.mjs';

const skip =
  (await browserSkipReason()) ??
  (existsSync(join(repoRoot, 'pkg-conformance/tandem_web_bg.wasm'))
    ? null
    : 'pkg-conformance/ is not built (scripts/build-conformance.sh)');
let server, browser;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await openBrowser(server.origin);
  await browser.page.evaluate(async () => {
    const m = await import('/pkg-conformance/tandem_web.js');
    await m.default();
    window.cpuFallback = m;
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
}

/** Calls `window.cpuFallback[fn](...args)` in the page: its JSON result, or its error. */
async function call(fn, ...args) {
  return browser.page.evaluate(
    async ({ fn, args }) => {
      try {
        return { ok: JSON.parse(await window.cpuFallback[fn](...args)) };
      } catch (e) {
        return { err: String(e?.message ?? e) };
      }
    },
    { fn, args },
  );
}

// Every op of the shared suite (tandem-tests' OPS), all cases.
const OPS = ['embed', 'rms_norm', 'matmul', 'rope', 'kv_write', 'attention_prefill', 'attention_decode', 'swiglu', 'hadamard', 'add', 'argmax', 'sample', 'mask_logits', 'copy_rows', 'lora_shrink', 'lora_expand'];

for (const op of OPS) {
  test(`conformance in the page on the WASM CPU fallback: ${op}`, { timeout: 300_000 }, async (t) => {
    if (skip) return skipped(t, skip);
    const start = Date.now();
    const res = await call('run_conformance_cpu', op, undefined);
    assert.ok(!res.err, `${op}: ${res.err}\n${browser.logs.join('\n')}`);
    assert.equal(res.ok.op, op);
    assert.equal(res.ok.backend, 'cpu-fast');
    assert.ok(res.ok.cases > 0, `${op}: no cases ran`);
    console.log(`${op} (${res.ok.backend}, wasm): ${res.ok.cases} cases pass, worst NMSE ${res.ok.worst_nmse.toExponential(3)} (${((Date.now() - start) / 1000).toFixed(1)} s)`);
  });
}

for (const op of ['matmul', 'attention']) {
  test(`batch invariance in the page on the WASM CPU fallback: ${op}`, { timeout: 300_000 }, async (t) => {
    if (skip) return skipped(t, skip);
    const res = await call('run_invariance_cpu', op);
    assert.ok(!res.err, `${op}: ${res.err}\n${browser.logs.join('\n')}`);
    assert.ok(res.ok.batches > 0, `${op}: no batches ran`);
    console.log(`${op} (${res.ok.backend}, wasm): ${res.ok.batches} batches bitwise equal to their requests alone`);
  });
}

test('the WASM CPU fallback converts every f16 block scale exactly', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  // The decode rows convert four scales at once in integer lanes, with and without the
  // infinity and NaN cases: every bit pattern against the reference's conversion.
  const res = await call('run_self_check_cpu');
  assert.ok(!res.err, res.err);
  assert.equal(res.ok.f16_patterns, 65536);
});

test('a browser without WebAssembly SIMD gets a clear error from createEngine', { timeout: 120_000 }, async (t) => {
  const model = stories260K();
  const reason = skip ?? model.skip;
  if (reason) return skipped(t, reason);
  const { chromium } = await import('playwright-core');
  const dir = mkdtempSync(join(tmpdir(), 'tandem-chromium-nosimd-'));
  // V8 offers WebAssembly SIMD only on CPUs with SSE4.1: without it, as on an old browser,
  // a module that uses SIMD does not compile.
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--js-flags=--no-enable-sse4-1'],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    await page.goto(`${server.origin}/tests/browser/page.html`);
    const res = await page.evaluate(async (urls) => {
      const probe = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);
      const { createEngine } = await import('/js/index.js');
      try {
        await createEngine({ urls }, { backend: 'cpu' });
        return { simd: WebAssembly.validate(probe), loaded: true };
      } catch (e) {
        return { simd: WebAssembly.validate(probe), error: String(e?.message ?? e) };
      }
    }, model.urls);
    assert.equal(res.simd, false, 'the flag should have turned WebAssembly SIMD off');
    assert.ok(!res.loaded, 'the engine loaded without SIMD');
    assert.match(res.error, /WebAssembly SIMD/);
    console.log(`without SIMD: ${res.error}`);
  } finally {
    await context.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
