// The shared conformance cases (tandem-tests) for a representative set of ops, run in the page
// on WebGPU (SwiftShader here) against the CPU reference compiled to wasm, compared exactly as
// the native harness compares them (same cases, same per-op tolerances).
//
// `npm run test:browser` builds pkg-conformance/ first (scripts/build-conformance.sh).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { browserSkipReason, openBrowser, repoRoot, startServer, webgpuSkipReason } from './harness.mjs';

const skip =
  (await browserSkipReason()) ??
  (existsSync(join(repoRoot, 'pkg-conformance/tandem_web_bg.wasm'))
    ? null
    : 'pkg-conformance/ is not built (scripts/build-conformance.sh)');
let server, browser, gpuSkip;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await openBrowser(server.origin);
  await browser.page.goto(`${server.origin}/tests/browser/conformance.html`);
  gpuSkip = await webgpuSkipReason(browser.page);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

// op -> the case-name filter (substrings, comma-separated; '' runs every case). All cases
// unless SwiftShader makes an op too slow; tolerances are never changed here.
const OPS = {
  matmul: '',
  attention_prefill: '',
  attention_decode: '',
  rms_norm: '',
  rope: '',
  sample: '',
  mask_logits: '',
  argmax: '',
  embed: '',
  kv_write: '',
  swiglu: '',
  geglu: '',
  softcap: '',
  hadamard: '',
  moe_route: '',
  moe_matmul: '',
  moe_sum: '',
  add: '',
  copy_rows: '',
  lora_shrink: '',
  lora_expand: '',
};

for (const [op, filter] of Object.entries(OPS)) {
  test(`conformance in the page on WebGPU: ${op}`, async (t) => {
    const reason = skip ?? gpuSkip;
    if (reason) {
      console.log(`SKIP ${t.name}: ${reason}`);
      t.skip(reason);
      return;
    }
    const start = Date.now();
    const res = await browser.page.evaluate(
      async ({ op, filter }) => {
        const c = await window.conformance;
        try {
          return { ok: JSON.parse(await c.run(op, filter || undefined)) };
        } catch (e) {
          return { err: String(e?.message ?? e) };
        }
      },
      { op, filter },
    );
    const secs = ((Date.now() - start) / 1000).toFixed(1);
    assert.ok(!res.err, `${op}: ${res.err}\n${browser.logs.join('\n')}`);
    const s = res.ok;
    assert.equal(s.op, op);
    assert.ok(s.cases > 0, `${op}: no cases ran`);
    console.log(`${op} (${s.backend}, in the page): ${s.cases} cases pass, worst NMSE ${s.worst_nmse.toExponential(3)} (${secs} s)`);
  });
}
