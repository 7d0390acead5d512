// End to end in the page, through the public JS API: each model family's fixture GGUF
// (tests/fixtures/families, tiny random-weight models of Qwen3, Qwen3-MoE, Gemma 2, Gemma 3,
// Phi-3 with LongRoPE, Mistral with its window, Mixtral) loaded from its URL, fed the
// reference's 200 prompt ids and generating 32 tokens greedily, must give exactly
// transformers' tokens (`gguf_reference` where the GGUF cannot carry a setting of the HF
// config) on WebGPU (SwiftShader here) and on the WASM CPU fallback.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { browserSkipReason, openBrowser, repoRoot, startServer, webgpuSkipReason } from './harness.mjs';

const FAMILIES = ['qwen3', 'qwen3_moe', 'gemma2', 'gemma3', 'phi3', 'mistral', 'mixtral'];
const fixtures = join(repoRoot, 'tests/fixtures/families');

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

/** The fixture's prompt ids and the greedy ids its GGUF must give. */
function reference(family) {
  const r = JSON.parse(readFileSync(join(fixtures, family, 'reference.json'), 'utf8'));
  return { prompt: r.prompt, greedy: (r.gguf_reference ?? r).greedy };
}

/** Loads `url` on `backend` in the page and generates `steps` greedy tokens after `prompt`. */
async function greedy(url, backend, prompt, steps) {
  return browser.page.evaluate(
    async ({ url, backend, prompt, steps }) => {
      const { createEngine } = await import('/js/index.js');
      const engine = await createEngine({ url }, { backend, cache: false });
      try {
        const stream = engine.generate(prompt, { max_tokens: steps, temperature: 0, ignore_eos: true });
        let text = '';
        for await (const piece of stream) text += piece;
        return { backend: engine.backend, info: engine.info, usage: await stream.usage, text };
      } finally {
        await engine.unload();
      }
    },
    { url, backend, prompt, steps },
  );
}

for (const backend of ['webgpu', 'cpu']) {
  for (const family of FAMILIES) {
    const name = `${family} GGUF: 32 greedy tokens after the reference prompt on ${backend === 'cpu' ? 'the WASM CPU fallback' : 'WebGPU'} equal transformers'`;
    test(name, { timeout: 300_000 }, async (t) => {
      if (skip) return skipped(t, skip);
      if (backend === 'webgpu' && noGpu) return skipped(t, noGpu);
      const file = join(fixtures, family, 'model.gguf');
      assert.ok(existsSync(file), `${file} is missing`);
      const want = reference(family);
      const start = Date.now();
      const result = await greedy(`/tests/fixtures/families/${family}/model.gguf`, backend, want.prompt, want.greedy.length);
      assert.equal(result.info.backend.kind, backend);
      assert.match(result.info.model.format, /^gguf/);
      const got = result.usage.token_ids;
      const first = got.findIndex((id, i) => id !== want.greedy[i]);
      assert.equal(first, -1, `${family} on ${backend}: token ${first} is ${got[first]}, the reference has ${want.greedy[first]}\n  got  ${got}\n  want ${want.greedy}`);
      assert.equal(got.length, want.greedy.length, `${family} on ${backend}: token count`);
      assert.equal(result.usage.prompt_tokens, want.prompt.length, 'the prompt ids are fed as given (no BOS)');
      assert.equal(result.usage.finish_detail, 'max_tokens');
      assert.ok(result.text.length > 0, 'the tokens stream as text');
      console.log(
        `${family} (${result.info.model.architecture}) on ${backend} (${result.backend}): ` +
          `${got.length}/${want.greedy.length} greedy tokens match (${((Date.now() - start) / 1000).toFixed(1)} s)`,
      );
    });
  }
}

test('token-id prompts out of range are clear errors', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const result = await browser.page.evaluate(async (url) => {
    const { createEngine, TandemError } = await import('/js/index.js');
    const engine = await createEngine({ url }, { backend: 'cpu', cache: false });
    const out = {};
    const attempt = async (key, prompt) => {
      try {
        const stream = engine.generate(prompt, { max_tokens: 2, temperature: 0 });
        for await (const _ of stream);
        out[key] = 'no error';
      } catch (e) {
        out[key] = `${e instanceof TandemError} ${e.message}`;
      }
    };
    await attempt('vocab', [10, 512]);
    await attempt('negative', [10, -1]);
    await attempt('fraction', [1.5]);
    await attempt('empty', []);
    await engine.unload();
    return out;
  }, '/tests/fixtures/families/qwen3/model.gguf');
  assert.match(result.vocab, /^true .*512 is outside the vocabulary \(size 512\)/);
  assert.match(result.negative, /^true .*non-negative integers; item 1 is -1/);
  assert.match(result.fraction, /^true .*item 0 is 1\.5/);
  assert.match(result.empty, /^true .*token ids are empty/);
});
