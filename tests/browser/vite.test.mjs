// The npm package the way a web app gets it: `npm pack`, a minimal Vite project that depends
// on the tarball, `vite build`, dist/ served statically, and stories260K's greedy reference
// tokens in headless Chromium (CPU and WebGPU); then the same app under Vite's dev server. This
// proves that the worker and the .wasm keep working URLs through Vite with no Vite
// configuration. Everything (npm's cache included) lives in one temp dir, removed at the end.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, normalize, sep } from 'node:path';
import { promisify } from 'node:util';
import { browserSkipReason, openBrowser, repoRoot, sharedModels, stories260K, webgpuSkipReason } from './harness.mjs';

/** `npm view vite version` when this test was written; exact, so the check is reproducible. */
const VITE_VERSION = '8.3.8';
const TOKENS = 20;

const model = stories260K();
const skip = (await browserSkipReason()) ?? model.skip ?? null;
const reference = model.skip ? null : JSON.parse(readFileSync(join(model.dir, 'reference_greedy.json'), 'utf8'));
let tmp, browser, server;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'tandem-vite-'));
});

after(async () => {
  await browser?.close();
  await server?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function skipped(t, reason) {
  console.log(`SKIP ${t.name}: ${reason}`);
  t.skip(reason);
}

/**
 * npm with its cache in the temp dir, and without the `npm_*` variables that `npm test` sets
 * for the repository (npm_config_local_prefix and friends would point the child at the repo).
 */
async function npm(args, cwd) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) || /^npm_config_(registry|userconfig)$/i.test(k)));
  env.npm_config_cache = join(tmp, 'npm-cache');
  env.npm_config_update_notifier = 'false';
  try {
    const { stdout } = await promisify(execFile)('npm', args, { cwd, env, maxBuffer: 64 << 20, timeout: 180_000 });
    return stdout;
  } catch (e) {
    e.message = `npm ${args.join(' ')} failed (exit ${e.code}):\n${e.stderr || e.message}`;
    throw e;
  }
}

const isNetworkError = (e) => /E(NOTFOUND|AI_AGAIN|CONNREFUSED|CONNRESET|TIMEDOUT|NETUNREACH)|network/i.test(e.message);

// ---------- the tarball ----------

test('npm pack: the tarball holds js/ and the pkg/ build, nothing else', { timeout: 60_000 }, async (t) => {
  if (!existsSync(join(repoRoot, 'pkg/tandem_web_bg.wasm'))) return skipped(t, 'pkg/ is not built (npm run build)');
  const [packed] = JSON.parse(await npm(['pack', '--dry-run', '--json', '--ignore-scripts'], repoRoot));
  const paths = packed.files.map((f) => f.path).sort();
  for (const need of ['package.json', 'js/index.js', 'js/index.d.ts', 'js/worker.js', 'pkg/tandem_web.js', 'pkg/tandem_web.d.ts', 'pkg/tandem_web_bg.wasm']) {
    assert.ok(paths.includes(need), `${need} is missing from the tarball: ${paths.join(', ')}`);
  }
  // The package's own files and what npm always adds; no tests, sources, builds or dotfiles.
  const allowed = /^(package\.json|README\.md|LICENSE[^/]*|js\/[\w-]+\.(js|d\.ts)|pkg\/tandem_web(\.js|\.d\.ts|_bg\.wasm|_bg\.wasm\.d\.ts)|pkg\/snippets\/[\w-]+\/[\w-]+\.js)$/;
  const junk = paths.filter((p) => !allowed.test(p));
  assert.deepEqual(junk, [], 'unexpected files in the tarball');
  console.log(`npm pack: ${packed.filename}, ${packed.files.length} files, ${packed.size} bytes packed, ${packed.unpackedSize} unpacked`);
});

// ---------- the Vite app ----------

const indexHtml = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>tandem in a Vite app</title>
<pre id="out"></pre>
<script type="module" src="/main.js"></script>
`;

// ?backend= picks the backend; ?models= where stories260K is (the test's server).
const mainJs = `import { createEngine } from 'tandem';

const params = new URLSearchParams(location.search);
const base = params.get('models') ?? '/models/stories260K/';
const names = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'];
const out = document.getElementById('out');

// No top-level await: Vite before 8 rejects it under its default build target.
async function main() {
  const urls = names.map((n) => new URL(n, new URL(base, location.href)).href);
  const engine = await createEngine({ urls }, { backend: params.get('backend') ?? 'auto' });
  const stream = engine.generate('', { max_tokens: ${TOKENS}, temperature: 0, ignore_eos: true });
  for await (const piece of stream) out.textContent += piece;
  const usage = await stream.usage;
  document.body.dataset.result = JSON.stringify({ backend: engine.backend, kind: engine.info.backend.kind, tokens: usage.token_ids });
  await engine.unload();
}
main().catch((e) => (document.body.dataset.error = e instanceof Error ? e.message : String(e)));
`;

let project = null;

/** The packed tarball in a fresh Vite project, installed and built (once for every test). */
function viteProject() {
  project ??= (async () => {
    const pack = JSON.parse(await npm(['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], repoRoot));
    const dir = join(tmp, 'app');
    mkdirSync(dir);
    const pkg = {
      name: 'tandem-vite-check',
      private: true,
      type: 'module',
      dependencies: { tandem: `file:../${pack[0].filename}` },
      devDependencies: { vite: VITE_VERSION },
    };
    writeFileSync(join(dir, 'package.json'), JSON.stringify(pkg, null, 2));
    writeFileSync(join(dir, 'index.html'), indexHtml);
    writeFileSync(join(dir, 'main.js'), mainJs);
    const t0 = Date.now();
    await npm(['install', '--no-audit', '--no-fund'], dir);
    const t1 = Date.now();
    await run(process.execPath, [vite(dir), 'build'], dir);
    console.log(`vite ${VITE_VERSION}: npm install ${((t1 - t0) / 1e3).toFixed(1)} s, vite build ${((Date.now() - t1) / 1e3).toFixed(1)} s`);
    return dir;
  })();
  return project;
}

const vite = (dir) => join(dir, 'node_modules/vite/bin/vite.js');

async function run(cmd, args, cwd) {
  try {
    return (await promisify(execFile)(cmd, args, { cwd, timeout: 120_000, maxBuffer: 64 << 20 })).stdout;
  } catch (e) {
    throw new Error(`${args.join(' ')} failed: ${e.stderr || e.message}\n${e.stdout ?? ''}`);
  }
}

/** The project, or a SKIP reason when the npm registry cannot be reached. */
async function projectOrSkip() {
  try {
    return { dir: await viteProject() };
  } catch (e) {
    if (isNetworkError(e)) return { skip: `the npm registry is unreachable: ${e.message.split('\n').slice(0, 3).join(' ')}` };
    throw e;
  }
}

const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json' };

/** A plain static server: `root` at /, the shared models at /models/ (CORS open, for the dev server's page). */
async function staticServer(root) {
  const s = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const [base, rel] = path.startsWith('/models/') ? [sharedModels, path.slice('/models/'.length)] : [root, path === '/' ? 'index.html' : path.slice(1)];
    const file = normalize(join(base, rel));
    if ((file !== base && !file.startsWith(base + sep)) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, {
      'content-type': types[extname(file)] ?? 'application/octet-stream',
      'content-length': statSync(file).size,
      'access-control-allow-origin': '*',
    });
    createReadStream(file).pipe(res);
  });
  s.keepAliveTimeout = 1000;
  await new Promise((ok) => s.listen(0, '127.0.0.1', ok));
  return {
    origin: `http://127.0.0.1:${s.address().port}`,
    close: () => new Promise((ok) => { s.closeAllConnections?.(); s.close(ok); }),
  };
}

/** Opens `url` and waits for the app's result; checks it against the reference. */
async function checkApp(url, label) {
  browser ??= await openBrowser(server.origin);
  const { page, logs } = browser;
  const since = logs.length;
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.result || document.body.dataset.error, null, { timeout: 90_000 });
  const { result, error, text } = await page.evaluate(() => ({ ...document.body.dataset, text: document.getElementById('out').textContent }));
  const pageLogs = logs.slice(since);
  assert.equal(error, undefined, `${label}: the app failed: ${error}\n${pageLogs.join('\n')}`);
  const r = JSON.parse(result);
  assert.deepEqual(r.tokens, reference.greedy_token_ids.slice(0, TOKENS), `${label}: tokens differ from the reference`);
  assert.ok(text.length > 0 && reference.text.startsWith(text), `${label}: the page shows ${JSON.stringify(text)}, not the start of the reference text`);
  assert.deepEqual(pageLogs.filter((l) => l.startsWith('[pageerror]')), [], `${label}: uncaught errors`);
  console.log(`${label}: backend ${r.backend}; ${TOKENS} tokens match the reference: ${JSON.stringify(text)}`);
  return r;
}

test('a Vite app (vite build, served statically) runs the package on the CPU and WebGPU', { timeout: 240_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const p = await projectOrSkip();
  if (p.skip) return skipped(t, p.skip);
  const dist = join(p.dir, 'dist');
  const assets = readdirSync(join(dist, 'assets'));
  assert.ok(assets.some((a) => a.endsWith('.wasm')), `the .wasm is one of the bundle's assets: ${assets.join(', ')}`);
  // The worker must be bundled with its imports, not copied as a lone file that imports ../pkg/.
  for (const a of assets.filter((a) => a.endsWith('.js'))) {
    assert.doesNotMatch(readFileSync(join(dist, 'assets', a), 'utf8'), /from\s*["']\.\.?\/(pkg|js)\//, `${a} imports a path that is not in dist/`);
  }
  server = await staticServer(dist);
  const cpu = await checkApp(`${server.origin}/?backend=cpu`, 'vite build, cpu');
  assert.equal(cpu.kind, 'cpu');
  const noGpu = await webgpuSkipReason(browser.page);
  if (noGpu) return console.log(`SKIP the WebGPU half: ${noGpu}`);
  const gpu = await checkApp(`${server.origin}/?backend=webgpu`, 'vite build, webgpu');
  assert.equal(gpu.kind, 'webgpu');
});

/** A free port on 127.0.0.1 for Vite's dev server (which wants one up front). */
async function freePort() {
  const s = createNetServer();
  await new Promise((ok) => s.listen(0, '127.0.0.1', ok));
  const { port } = s.address();
  await new Promise((ok) => s.close(ok));
  return port;
}

test("the same app under Vite's dev server (dependency pre-bundling) runs on the CPU", { timeout: 180_000 }, async (t) => {
  if (skip) return skipped(t, skip);
  const p = await projectOrSkip();
  if (p.skip) return skipped(t, p.skip);
  server ??= await staticServer(join(p.dir, 'dist'));
  const port = await freePort();
  const dev = spawn(process.execPath, [vite(p.dir), '--host', '127.0.0.1', '--port', String(port), '--strictPort'], {
    cwd: p.dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Under CI=true Vite colors its output even into a pipe, splitting the URL with escapes.
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
  });
  let output = '';
  dev.stdout.on('data', (d) => (output += d));
  dev.stderr.on('data', (d) => (output += d));
  try {
    const origin = `http://127.0.0.1:${port}`;
    await new Promise((ok, fail) => {
      const done = (error) => {
        clearInterval(poll);
        clearTimeout(timer);
        error ? fail(error) : ok();
      };
      const timer = setTimeout(() => done(new Error(`vite dev did not start in 60 s:\n${output}`)), 60_000);
      const poll = setInterval(() => output.replace(/\x1b\[[0-9;]*m/g, '').includes(origin) && done(), 100);
      dev.once('exit', (code) => done(new Error(`vite dev exited (${code}):\n${output}`)));
    });
    const r = await checkApp(`${origin}/?backend=cpu&models=${encodeURIComponent(`${server.origin}/models/stories260K/`)}`, 'vite dev, cpu');
    assert.equal(r.kind, 'cpu');
  } finally {
    dev.kill();
  }
});
