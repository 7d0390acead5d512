// The demo page (www/), driven like a user would: load stories260K through the UI on the CPU
// backend, send a prompt, see the streamed answer and a tokens/s figure, save a screenshot
// (tests/browser/artifacts/demo.png); and a bad model URL shows a clear message in the page.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { browserSkipReason, openBrowser, repoRoot, sharedModels, stories260K } from './harness.mjs';
import { startDemoServer } from '../../scripts/serve-demo.mjs';

const model = stories260K();
const skip = (await browserSkipReason()) ?? model.skip ?? null;
const artifacts = join(repoRoot, 'tests/browser/artifacts');
let server, browser;

before(async () => {
  if (skip) return;
  // The demo's own server, in-process on a free port; /models/ from the shared models only, so
  // the test does not depend on what this machine's model cache holds.
  server = await startDemoServer({ port: 0, roots: [sharedModels] });
  browser = await openBrowser(server.origin);
  await browser.page.goto(`${server.origin}/www/`);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
}

async function load(page, urls, backend) {
  await page.fill('#model-url', urls);
  await page.selectOption('#backend', backend);
  await page.click('#load');
}

test('demo page: a bad model URL shows a clear error in the page', { timeout: 60_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const { page } = browser;
  await load(page, '/models/no-such-model.gguf', 'cpu');
  await page.waitForSelector('#error:not([hidden])', { timeout: 30_000 });
  const message = await page.textContent('#error');
  console.log(`error box: ${message}`);
  assert.match(message, /Could not load the model: .*no-such-model\.gguf.*404/);
  assert.equal(await page.isDisabled('#send'), true, 'no engine, no sending');
  assert.equal(await page.isEnabled('#load'), true, 'the user can try again');
});

test('demo page: load stories260K through the UI, chat, streamed answer and tokens/s', { timeout: 180_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const { page, logs } = browser;
  // The preset list knows stories260K and found its files on this server.
  const preset = page.locator('#preset option', { hasText: 'stories260K' });
  assert.equal(await preset.isDisabled(), false, 'the stories260K preset is available');

  await load(page, model.urls.join(' '), 'cpu');
  await page.waitForFunction(() => !document.getElementById('prompt').disabled, null, { timeout: 120_000 });
  assert.equal(await page.isHidden('#error'), true, `no error: ${await page.textContent('#error')}`);
  assert.match(await page.textContent('#backend-name'), /^cpu/);
  assert.match(await page.textContent('#progress-text'), /^Loaded in/);
  assert.match(await page.textContent('#model-name'), /model\.safetensors/);

  await page.fill('#temperature', '0');
  await page.fill('#max-tokens', '60');
  await page.fill('#prompt', 'Once upon a time');
  await page.click('#send');
  // Streamed text appears in the assistant's bubble, then the final tokens/s figure.
  await page.waitForFunction(() => document.querySelector('.msg.assistant')?.textContent.trim().length > 0, null, { timeout: 60_000 });
  await page.waitForFunction(() => /^\d+(\.\d+)? tok\/s$/.test(document.getElementById('tps').textContent), null, { timeout: 120_000 });
  const answer = await page.textContent('.msg.assistant');
  const tps = await page.textContent('#tps');
  const ttft = await page.textContent('#ttft');
  const tokens = await page.textContent('#tokens');
  console.log(`answer: ${JSON.stringify(answer)}\ntime to first token: ${ttft}; decode: ${tps}; tokens: ${tokens}`);
  assert.ok(answer.trim().length > 0, 'the answer has text');
  assert.ok(Number.parseFloat(tps) > 0, `tokens/s: ${tps}`);
  assert.match(ttft, /^\d+ ms$/);
  assert.equal(await page.isHidden('#error'), true, `no error: ${await page.textContent('#error')}`);
  const messages = await page.evaluate(() => window.tandemDemo.messages);
  assert.deepEqual(messages.map((m) => m.role), ['user', 'assistant'], 'the conversation is kept as messages');
  assert.equal(messages[1].content, answer);

  mkdirSync(artifacts, { recursive: true });
  const shot = join(artifacts, 'demo.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  assert.deepEqual(logs.filter((l) => l.startsWith('[pageerror]')), [], 'no uncaught page errors');
});
