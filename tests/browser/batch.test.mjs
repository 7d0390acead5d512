// Concurrent requests on one engine, through the public JS API: the worker batches them in its
// one scheduler. Four chat completions at once (greedy and seeded, different lengths) must each
// give exactly what they give alone, on WebGPU (SwiftShader here) and on the WASM CPU fallback,
// and their pieces must arrive interleaved (one batch, not a queue). Interrupting one of several
// (leaving its loop, or its AbortSignal) must leave the others unchanged. The batching options
// show in engine.info and are checked.
//
// stories260K has no chat template; the page hands it a tokenizer_config.json with a minimal
// one (the BOS token, then the messages' text), as a `{ files }` source.

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
  // Loads stories260K with a chat template; `window.chats` are the test's four requests.
  await browser.page.evaluate(async (urls) => {
    const { createEngine } = await import('/js/index.js');
    const tokenizerConfig = JSON.stringify({
      bos_token: '<s>',
      eos_token: '</s>',
      add_bos_token: true,
      chat_template: '{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}',
    });
    window.loadChatEngine = async (options) => {
      const files = [];
      for (const url of urls) {
        const name = url.split('/').pop();
        const data = name === 'tokenizer_config.json' ? new Blob([tokenizerConfig]) : await (await fetch(url)).blob();
        files.push({ name, data });
      }
      return createEngine({ files }, options);
    };
    const starts = ['Once upon a time', 'Lily and Tom went to the park', 'The little dog', 'One day, a big bird'];
    window.chats = starts.map((content, i) => ({
      messages: [{ role: 'user', content }],
      max_tokens: 24 + 9 * i,
      ignore_eos: true,
      ...(i % 2 === 0 ? { temperature: 0 } : { temperature: 0.9, top_p: 0.95, seed: 100 + i }),
    }));
    // Each request alone, one after the other, on `engine`.
    window.solo = async (engine) => {
      const out = [];
      for (const params of window.chats) {
        const r = await engine.chat.completions.create(params);
        out.push({ content: r.choices[0].message.content, finish: r.choices[0].finish_reason, tokens: r.usage.token_ids });
      }
      return out;
    };
  }, model.urls);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
}

/** The four requests alone, then all at once (streamed), on one engine on `backend`. */
function concurrentVsSolo(backend, options = {}) {
  return browser.page.evaluate(async ([backend, options]) => {
    const engine = await window.loadChatEngine({ backend, ...options });
    const solo = await window.solo(engine);
    // Every chunk of every request, in the order they arrive.
    const arrivals = [];
    const t0 = performance.now();
    const together = await Promise.all(
      window.chats.map(async (params, i) => {
        const chunks = await engine.chat.completions.create({ ...params, stream: true });
        let content = '';
        let usage = null;
        for await (const chunk of chunks) {
          const piece = chunk.choices[0].delta.content;
          if (piece) {
            content += piece;
            arrivals.push(i);
          }
          usage = chunk.usage ?? usage;
        }
        return { content, finish: usage.finish_reason, tokens: usage.token_ids, queue_ms: usage.queue_ms };
      }),
    );
    const ms = performance.now() - t0;
    const result = { info: engine.info, backend: engine.backend, solo, together, arrivals, ms };
    await engine.unload();
    return result;
  }, [backend, options]);
}

function checkConcurrent(r, label) {
  assert.equal(r.info.model.max_seqs, 4, 'the default maxSeqs');
  assert.equal(r.info.model.kv_tokens, 2048, 'the default kvTokens: the default context');
  for (let i = 0; i < 4; i++) {
    const [got, want] = [r.together[i], r.solo[i]];
    assert.equal(want.tokens.length, 24 + 9 * i, `${label}: request ${i} alone ran to max_tokens`);
    assert.deepEqual(got.tokens, want.tokens, `${label}: request ${i}'s tokens together and alone`);
    assert.equal(got.content, want.content, `${label}: request ${i}'s text`);
    assert.equal(got.finish, 'length');
  }
  assert.notDeepEqual(r.solo[1].tokens, r.solo[3].tokens, 'different requests, different tokens');
  // Batched, every request streams from the first steps on: request 3's first piece comes
  // before request 0's last (a queue would run 0 to its end first).
  const firstOf3 = r.arrivals.indexOf(3);
  const lastOf0 = r.arrivals.lastIndexOf(0);
  assert.ok(firstOf3 >= 0 && firstOf3 < lastOf0, `pieces arrived in the order ${r.arrivals.join('')}`);
  console.log(
    `${label}: backend ${r.backend}; 4 concurrent chats (${r.together.map((x) => x.tokens.length).join('+')} tokens, ` +
      `greedy and seeded) equal their solo runs; together in ${r.ms.toFixed(0)} ms; arrival order ${r.arrivals.join('')}`,
  );
}

test('4 concurrent chat completions on WebGPU each equal their solo output', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const noGpu = await webgpuSkipReason(browser.page);
  if (noGpu) return skipped(t, noGpu);
  const r = await concurrentVsSolo('webgpu');
  assert.equal(r.info.backend.kind, 'webgpu');
  checkConcurrent(r, 'webgpu');
});

test('4 concurrent chat completions on the WASM CPU fallback each equal their solo output', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const r = await concurrentVsSolo('cpu');
  assert.equal(r.info.backend.kind, 'cpu');
  checkConcurrent(r, 'cpu');
});

test('interrupting one of several concurrent requests leaves the others unchanged', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const noGpu = await webgpuSkipReason(browser.page);
  const backends = noGpu ? ['cpu'] : ['webgpu', 'cpu'];
  if (noGpu) console.log(`interrupt test on the CPU only: ${noGpu}`);
  for (const backend of backends) {
    const r = await browser.page.evaluate(async (backend) => {
      const engine = await window.loadChatEngine({ backend });
      const solo = await window.solo(engine);
      const controller = new AbortController();
      // Request 1 leaves its loop after 3 pieces; request 2 (not streamed) is aborted by its
      // signal once request 0 has streamed 5 pieces.
      const together = await Promise.all(
        window.chats.map(async (params, i) => {
          if (i === 2) {
            const r = await engine.chat.completions.create(params, { signal: controller.signal });
            return { content: r.choices[0].message.content, finish: r.choices[0].finish_reason, tokens: r.usage.token_ids };
          }
          const stream = await engine.chat.completions.create({ ...params, stream: true });
          let content = '';
          let pieces = 0;
          let usage = null;
          for await (const chunk of stream) {
            content += chunk.choices[0].delta.content ?? '';
            usage = chunk.usage ?? usage;
            if (chunk.choices[0].delta.content) pieces++;
            if (i === 0 && pieces === 5) controller.abort();
            if (i === 1 && pieces === 3) break;
          }
          return { content, finish: usage?.finish_reason ?? 'left the loop', tokens: usage?.token_ids };
        }),
      );
      // The engine runs on: request 1 again, alone.
      const again = await engine.chat.completions.create(window.chats[1]);
      await engine.unload();
      return { solo, together, again: again.usage.token_ids };
    }, backend);
    for (const i of [0, 3]) {
      assert.deepEqual(r.together[i].tokens, r.solo[i].tokens, `${backend}: request ${i} unchanged`);
      assert.equal(r.together[i].content, r.solo[i].content, `${backend}: request ${i}'s text unchanged`);
    }
    assert.equal(r.together[1].finish, 'left the loop');
    assert.ok(r.solo[1].content.startsWith(r.together[1].content), `${backend}: request 1 streamed a prefix of its solo text`);
    const aborted = r.together[2];
    assert.equal(aborted.finish, 'interrupted', `${backend}: request 2 was interrupted by its signal`);
    assert.ok(aborted.tokens.length < r.solo[2].tokens.length, `${backend}: request 2 stopped early (${aborted.tokens.length} tokens)`);
    assert.deepEqual(aborted.tokens, r.solo[2].tokens.slice(0, aborted.tokens.length), `${backend}: request 2's tokens until then`);
    assert.deepEqual(r.again, r.solo[1].tokens, `${backend}: the engine still runs`);
    console.log(`${backend}: requests 0 and 3 unchanged while 1 left its loop after 3 pieces and 2 was aborted after ${aborted.tokens.length} tokens`);
  }
});

test('batching options: maxSeqs and kvTokens in engine.info; bad values and requests that never fit are clear errors', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const r = await browser.page.evaluate(async () => {
    const out = {};
    const engine = await window.loadChatEngine({ backend: 'cpu', maxSeqs: 2, kvTokens: 64 });
    out.model = engine.info.model;
    // Three requests on two slots and a 64-token cache: they take turns, with the same result.
    const solo = await window.solo(engine);
    const together = await Promise.all(window.chats.slice(0, 3).map((p) => engine.chat.completions.create(p)));
    out.same = together.every((r, i) => JSON.stringify(r.usage.token_ids) === JSON.stringify(solo[i].tokens));
    // The third had no slot until one of the first two had finished.
    out.queued = together[2].usage.queue_ms;
    try {
      await engine.chat.completions.create({ messages: [{ role: 'user', content: 'Once upon a time '.repeat(20) }], max_tokens: 5 });
    } catch (e) {
      out.tooLong = `${e instanceof Error} ${e.message}`;
    }
    await engine.unload();
    try {
      await window.loadChatEngine({ backend: 'cpu', maxSeqs: 0 });
    } catch (e) {
      out.badSeqs = `${e instanceof Error} ${e.message}`;
    }
    return out;
  });
  assert.equal(r.model.max_seqs, 2);
  assert.equal(r.model.kv_tokens, 64);
  assert.ok(r.same, 'three requests on two slots equal their solo runs');
  assert.ok(r.queued > 0, `the third waited for a slot (${r.queued} ms)`);
  assert.match(r.tooLong ?? '', /^true .*the KV cache holds 64/);
  assert.match(r.badSeqs ?? '', /^true maxSeqs must be at least 1/);
});

test('a q8_0 KV cache: its size in engine.info, batched requests equal to each alone; a bad kvDtype is a clear error', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const gpuSkip = await webgpuSkipReason(browser.page);
  if (gpuSkip) console.log(`SKIP q8_0 KV cache on webgpu: ${gpuSkip}`);
  for (const backend of gpuSkip ? ['cpu'] : ['webgpu', 'cpu']) {
    const r = await concurrentVsSolo(backend, { kvDtype: 'q8_0' });
    const m = r.info.model;
    assert.equal(m.kv_dtype, 'q8_0', backend);
    // stories260K: 5 layers, K and V, rows of 4 KV heads x 8 = one block of 32 (34 bytes).
    assert.equal(m.kv_bytes_per_token, 2 * 5 * 34, backend);
    r.together.forEach((got, i) => assert.deepEqual(got.tokens, r.solo[i].tokens, `${backend}: request ${i} batched vs alone`));
    console.log(`${backend}: q8_0 KV, ${m.kv_bytes_per_token} bytes a token; four requests batched equal each alone`);
  }
  const bad = await browser.page.evaluate(async () => {
    try {
      await window.loadChatEngine({ backend: 'cpu', kvDtype: 'q3' });
    } catch (e) {
      return `${e instanceof Error} ${e.message}`;
    }
  });
  assert.match(bad ?? '', /^true kvDtype must be one of f32, f16, q8_0, q4_0, fp8, not 'q3'/);
});
