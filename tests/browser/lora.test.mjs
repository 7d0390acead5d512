// LoRA adapters through the public JS API in the page: the Qwen3 family fixture's GGUF with
// PEFT adapters loaded from a directory URL and from their files' URLs, a LoRA GGUF from its URL
// (tests/fixtures/lora), three adapters on two slots and the base model generating at once.
// Each request must give PEFT's greedy tokens (the base model's for the base), on WebGPU
// (SwiftShader here) and on the WASM CPU fallback; an unloaded adapter is refused by name.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { browserSkipReason, openBrowser, repoRoot, startServer, webgpuSkipReason } from './harness.mjs';

const fixtures = join(repoRoot, 'tests/fixtures/lora');
const skip = await browserSkipReason();
let server, browser, noGpu;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await openBrowser(server.origin);
  noGpu = await webgpuSkipReason(browser.page);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
}

const reference = (adapter) => JSON.parse(readFileSync(join(fixtures, `qwen3-${adapter}`, 'reference.json'), 'utf8'));

for (const backend of ['webgpu', 'cpu']) {
  const where = backend === 'cpu' ? 'the WASM CPU fallback' : 'WebGPU';
  test(`three LoRA adapters on two slots and the base model at once give PEFT's greedy tokens on ${where}`, { timeout: 300_000 }, async (t) => {
    if (skip) return skipped(t, skip);
    if (backend === 'webgpu' && noGpu) return skipped(t, noGpu);
    const prompt = reference('r8').prompt;
    const steps = reference('r8').greedy.length;
    const result = await browser.page.evaluate(
      async ({ backend, prompt, steps }) => {
        const { createEngine } = await import('/js/index.js');
        const engine = await createEngine({ url: '/tests/fixtures/families/qwen3/model.gguf' }, { backend, cache: false, maxLoras: 2, maxLoraRank: 64 });
        try {
          await engine.loadAdapter('r8', '/tests/fixtures/lora/qwen3-r8/');
          const dir64 = '/tests/fixtures/lora/qwen3-r64-rslora';
          await engine.loadAdapter('r64', { urls: [`${dir64}/adapter_config.json`, `${dir64}/adapter_model.safetensors`] });
          await engine.loadAdapter('r16', { url: '/tests/fixtures/lora/qwen3-r16/adapter.gguf' });
          const errors = {};
          await engine.loadAdapter('r8', '/tests/fixtures/lora/qwen3-r8/').catch((e) => (errors.taken = e.message));
          await engine.loadAdapter('missing', '/tests/fixtures/lora/no-such-adapter/').catch((e) => (errors.missing = e.message));
          const run = (options) => {
            const stream = engine.generate(prompt, { max_tokens: steps, temperature: 0, ignore_eos: true, ...options });
            return (async () => {
              for await (const _ of stream);
              return (await stream.usage).token_ids;
            })();
          };
          const [r8, r64, r16, base] = await Promise.all([run({ adapter: 'r8' }), run({ adapter: 'r64' }), run({ adapter: 'r16' }), run({})]);
          await engine.unloadAdapter('r8');
          await run({ adapter: 'r8' }).catch((e) => (errors.unloaded = e.message));
          return { kind: engine.info.backend.kind, info: engine.info.model, r8, r64, r16, base, errors };
        } finally {
          await engine.unload();
        }
      },
      { backend, prompt, steps },
    );
    assert.equal(result.kind, backend);
    assert.equal(result.info.max_loras, 2);
    assert.deepEqual(result.r8, reference('r8').greedy, 'adapter r8 (PEFT files)');
    assert.deepEqual(result.r64, reference('r64-rslora').greedy, 'adapter r64-rslora (PEFT files)');
    assert.deepEqual(result.r16, reference('r16').greedy, 'adapter r16 (LoRA GGUF)');
    assert.deepEqual(result.base, reference('r8').base_greedy, 'the base model');
    assert.match(result.errors.taken ?? '', /taken/);
    assert.match(result.errors.missing ?? '', /no-such-adapter.*404|404.*no-such-adapter/);
    assert.match(result.errors.unloaded ?? '', /r8/);
  });
}
