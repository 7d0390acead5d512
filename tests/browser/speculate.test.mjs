// Speculative decoding in the browser, through the public JS API: `draftModel` (here the model
// itself, as a second set of files: every greedy draft is accepted) and `speculate: 'ngram'`. Greedy
// and seeded chat completions must give exactly the tokens of the same engine options without
// speculation, the usage must count drafted and accepted tokens, and engine.info must say which
// speculation runs. On WebGPU (SwiftShader here) and on the WASM CPU fallback.

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
  await browser.page.evaluate(async (urls) => {
    const { createEngine } = await import('/js/index.js');
    const tokenizerConfig = JSON.stringify({
      bos_token: '<s>',
      eos_token: '</s>',
      add_bos_token: true,
      chat_template: '{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}',
    });
    window.chatFiles = async () => {
      const files = [];
      for (const url of urls) {
        const name = url.split('/').pop();
        const data = name === 'tokenizer_config.json' ? new Blob([tokenizerConfig]) : await (await fetch(url)).blob();
        files.push({ name, data });
      }
      return { files };
    };
    window.loadChatEngine = async (options) => createEngine(await window.chatFiles(), options);
    window.chats = [
      { messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 48, ignore_eos: true, temperature: 0 },
      { messages: [{ role: 'user', content: 'The little dog' }], max_tokens: 32, ignore_eos: true, temperature: 0.9, seed: 11 },
    ];
    window.runChats = async (options) => {
      const engine = await window.loadChatEngine(options);
      const out = [];
      for (const params of window.chats) {
        const r = await engine.chat.completions.create(params);
        out.push({ content: r.choices[0].message.content, tokens: r.usage.token_ids, drafted: r.usage.draft_tokens, accepted: r.usage.accepted_tokens });
      }
      const info = engine.info;
      await engine.unload();
      return { out, info };
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

function speculationVsPlain(backend) {
  return browser.page.evaluate(async (backend) => {
    const plain = await window.runChats({ backend });
    const drafted = await window.runChats({ backend, draftModel: await window.chatFiles(), draftTokens: 4 });
    const ngram = await window.runChats({ backend, speculate: 'ngram' });
    let badOption = null;
    try {
      await window.loadChatEngine({ backend, speculate: 'medusa' });
    } catch (e) {
      badOption = e.message;
    }
    return { plain, drafted, ngram, badOption };
  }, backend);
}

function check(r, label) {
  assert.equal(r.plain.info.speculation, null);
  assert.equal(r.drafted.info.speculation, 'draft-model');
  assert.equal(r.ngram.info.speculation, 'ngram');
  for (let i = 0; i < r.plain.out.length; i++) {
    const want = r.plain.out[i];
    assert.equal(want.drafted, 0, `${label}: no drafts without speculation`);
    for (const [name, got] of [['draft model', r.drafted.out[i]], ['n-gram', r.ngram.out[i]]]) {
      assert.deepEqual(got.tokens, want.tokens, `${label}: ${name}: request ${i}'s tokens with and without speculation`);
      assert.equal(got.content, want.content);
      assert.ok(got.accepted <= got.drafted);
    }
    // The model drafting for itself: drafts come, and greedy ones are all accepted.
    const d = r.drafted.out[i];
    assert.ok(d.drafted > 0 && (i > 0 || d.accepted === d.drafted), `${label}: request ${i}: ${JSON.stringify(d)}`);
  }
  assert.match(r.badOption, /speculate must be 'ngram'/);
  console.log(
    `${label}: greedy and seeded chats equal with a draft model (${r.drafted.out.map((o) => `${o.accepted}/${o.drafted}`).join(', ')} accepted) ` +
      `and with n-gram drafting (${r.ngram.out.map((o) => `${o.accepted}/${o.drafted}`).join(', ')})`,
  );
}

test('speculative decoding on WebGPU keeps the model\'s own tokens', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const noGpu = await webgpuSkipReason(browser.page);
  if (noGpu) return skipped(t, noGpu);
  check(await speculationVsPlain('webgpu'), 'webgpu');
});

test('speculative decoding on the WASM CPU fallback keeps the model\'s own tokens', { timeout: 300_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  check(await speculationVsPlain('cpu'), 'cpu');
});
