// `tandem serve`'s chat page (GET /), driven like a user would in headless Chromium: the model
// picker lists the served model, Shift+Enter starts a new line and Enter sends, a question
// streams its greedy answer (SmolLM2's, the same as `tandem run`) with its time to first
// token and tok/s, Stop aborts a long answer and the server frees its KV blocks; SIGINT then
// ends the server with exit code 0. Needs the release binary (cargo build --release -p
// tandem-cli) and the default model in tandem's cache (the cargo tests fetch it): SKIP otherwise.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { browserSkipReason, defaultModel, openBrowser, repoRoot } from './harness.mjs';

const binary = join(repoRoot, 'target/release/tandem');
const model = defaultModel();
const gguf = model.file;
const skip =
  (await browserSkipReason()) ??
  (existsSync(binary) ? null : `${binary} is not built (cargo build --release -p tandem-cli)`) ??
  model.skip ??
  null;
let server, origin, browser;

/** Starts `tandem serve` on a free port; resolves with its origin once it listens. */
function startServe() {
  const args = ['serve', '--backend', 'cpu', '--threads', '2', '--port', '0', '--ctx', '512', '--model', `smollm=${gguf}`];
  const proc = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const listening = new Promise((ok, fail) => {
    proc.stderr.on('data', (d) => {
      err += d;
      const m = err.match(/listening on (http:\/\/\S+)/);
      if (m) ok(m[1]);
    });
    proc.on('exit', (code) => fail(new Error(`tandem serve exited with ${code}:\n${err}`)));
  });
  const exited = new Promise((ok) => proc.on('exit', (code, signal) => ok({ code, signal })));
  return { proc, listening, exited, log: () => err };
}

before(async () => {
  if (skip) return;
  server = startServe();
  origin = await server.listening;
  // /health is 200 once the model is loaded.
  for (let i = 0; i < 600; i++) {
    if ((await fetch(`${origin}/health`)).ok) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  browser = await openBrowser(origin);
  await browser.page.goto(`${origin}/`);
});

after(async () => {
  await browser?.close();
  if (server && server.proc.exitCode === null) server.proc.kill('SIGKILL');
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
}

async function kvBlocksUsed() {
  const text = await (await fetch(`${origin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('tandem_kv_blocks_used{'));
  assert.ok(line, `no tandem_kv_blocks_used in /metrics:\n${text.slice(0, 2000)}`);
  return Number(line.split(' ').pop());
}

test('the chat page streams the greedy answer of the served model', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const { page } = browser;
  await page.waitForFunction(() => document.querySelector('#model')?.options.length > 0);
  assert.equal(await page.inputValue('#model'), 'smollm');
  // Shift+Enter starts a new line; Enter sends.
  await page.fill('#prompt', 'What is the capital');
  await page.press('#prompt', 'Shift+Enter');
  assert.equal(await page.inputValue('#prompt'), 'What is the capital\n', 'Shift+Enter adds a line');
  assert.equal(await page.locator('.msg.user').count(), 0, 'Shift+Enter sent the message');
  await page.fill('#prompt', 'What is the capital of France?');
  await page.press('#prompt', 'Enter');
  await page.waitForFunction(() => /tokens in/.test(document.querySelector('#status').textContent), null, { timeout: 100_000 });
  const answer = await page.textContent('.msg.assistant');
  assert.equal(answer, 'The capital of France is Paris.', browser.logs.join('\n'));
  assert.equal(await page.inputValue('#prompt'), '', 'Enter sent and cleared the prompt');
  const status = await page.textContent('#status');
  assert.match(status, /first token after \d+ ms, [\d.]+ tok\/s/, status);
  console.log(`chat page: "${answer}" (${status})`);
});

test('Stop aborts a long answer and the server frees its blocks', { timeout: 120_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const { page } = browser;
  await page.click('#clear');
  await page.fill('#prompt', 'Write a very long story about a dragon who learns to bake bread.');
  await page.click('#send');
  await page.waitForFunction(() => document.querySelector('.msg.assistant')?.textContent.length > 20, null, { timeout: 100_000 });
  await page.click('#stop');
  await page.waitForFunction(() => document.querySelector('#status').textContent === 'stopped');
  const stopped = await page.textContent('.msg.assistant');
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(await page.textContent('.msg.assistant'), stopped, 'the answer keeps growing after Stop');
  // The abort reaches the engine within a step; give it a moment.
  let used = await kvBlocksUsed();
  for (let i = 0; i < 50 && used > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    used = await kvBlocksUsed();
  }
  assert.equal(used, 0, 'KV blocks still in use after Stop');
});

test('SIGINT ends the server with exit code 0', { timeout: 60_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  server.proc.kill('SIGINT');
  const { code, signal } = await server.exited;
  assert.equal(code, 0, `exit ${code} (signal ${signal}):\n${server.log()}`);
});
