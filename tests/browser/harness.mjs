// Shared by the browser tests: a loopback static server over the repository (and the shared
// models), and headless Chromium through playwright-core with the flags from
// ../shared/ENVIRONMENT.md. Anything missing becomes a SKIP reason, never a vague failure.

import { createServer } from 'node:http';
import { createReadStream, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const sharedModels = process.env.TANDEM_SHARED_MODELS
  ? resolve(process.env.TANDEM_SHARED_MODELS)
  : resolve(repoRoot, '../shared/models');
export const chromiumPath = process.env.TANDEM_CHROMIUM ?? '/usr/bin/chromium';
/** tandem's model cache (`tandem run` fetches the default model there). */
export const modelCache = join(process.env.TANDEM_CACHE_DIR ? resolve(process.env.TANDEM_CACHE_DIR) : join(homedir(), '.cache/tandem'), 'models');

const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.css': 'text/css',
  '.png': 'image/png',
};

/**
 * Serves the repository at /, the shared models at /models/ and tandem's model cache at
 * /cache-models/ on 127.0.0.1 (a free port). `requests` counts GETs per path, so tests can
 * tell a download from a cache hit, and `log` has one `{ path, range, status, bytes }` per GET
 * (the Range header asked, the status answered, the body bytes sent). A `?nolength` query
 * leaves out `content-length` (the body's size unknown to the page, as with a chunked or
 * compressed response). Range requests (`bytes=N-` and `bytes=N-M`) are answered 206 with a
 * Content-Range, and every file has an ETag (its size and time).
 *
 * Controls, per path: `dropAfter(path, bytes)` cuts the next GET of `path` off after that many
 * body bytes (a pause, then the connection closes: the page sees a network error); `throttle(path,
 * bytesPerSecond)` paces its bodies (null: full speed); `ignoreRange(path)` answers Range
 * requests with the whole file (200), as servers without range support do.
 */
export async function startServer() {
  const requests = new Map();
  const log = [];
  const drops = new Map();
  const throttles = new Map();
  const rangeIgnored = new Set();
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const path = decodeURIComponent(url.pathname);
    requests.set(path, (requests.get(path) ?? 0) + 1);
    const mounts = [['/models/', sharedModels], ['/cache-models/', modelCache]];
    const mount = mounts.find(([prefix]) => path.startsWith(prefix));
    const [base, rel] = mount ? [mount[1], path.slice(mount[0].length)] : [repoRoot, path.slice(1)];
    const file = normalize(join(base, rel));
    if ((file !== base && !file.startsWith(base + sep)) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    const stat = statSync(file);
    const headers = { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store', etag: `"${stat.size}-${Math.floor(stat.mtimeMs)}"` };
    const entry = { path, range: req.headers.range ?? null, status: 200, bytes: 0 };
    log.push(entry);
    let [start, end] = [0, stat.size - 1];
    const range = rangeIgnored.has(path) ? null : /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (range) {
      start = Number(range[1]);
      end = Math.min(range[2] ? Number(range[2]) : end, end);
      if (start > end) {
        entry.status = 416;
        res.writeHead(416, { 'content-range': `bytes */${stat.size}` }).end();
        return;
      }
      entry.status = 206;
      headers['content-range'] = `bytes ${start}-${end}/${stat.size}`;
    }
    if (!url.searchParams.has('nolength')) headers['content-length'] = end - start + 1;
    res.writeHead(entry.status, headers);
    const drop = drops.get(path);
    drops.delete(path);
    sendFile(res, file, start, end, { drop, bytesPerSecond: throttles.get(path) }, (n) => (entry.bytes += n));
  });
  // Bounded: no keep-alive sockets outlive the test, and a stuck request ends.
  server.keepAliveTimeout = 1000;
  server.requestTimeout = 60_000;
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    requests,
    log,
    /** Body bytes sent for `path` over all its GETs. */
    served: (path) => log.filter((e) => e.path === path).reduce((n, e) => n + e.bytes, 0),
    dropAfter: (path, bytes) => drops.set(path, bytes),
    throttle: (path, bytesPerSecond) => (bytesPerSecond ? throttles.set(path, bytesPerSecond) : throttles.delete(path)),
    ignoreRange: (path, ignore = true) => (ignore ? rangeIgnored.add(path) : rangeIgnored.delete(path)),
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(ok); }),
  };
}

/** Writes `chunk`; resolves when it was handed to the socket (false if the client left). */
function write(res, chunk) {
  return new Promise((ok) => {
    if (res.destroyed) return ok(false);
    res.write(chunk, (e) => ok(!e));
  });
}

/**
 * Sends bytes `start..=end` of `file`, calling `count(n)` per piece sent. `drop`: cut the
 * connection after that many bytes; `bytesPerSecond`: pace the body.
 */
async function sendFile(res, file, start, end, { drop, bytesPerSecond }, count) {
  const stream = createReadStream(file, { start, end, highWaterMark: bytesPerSecond ? 16 << 10 : 64 << 10 });
  let sent = 0;
  try {
    for await (const chunk of stream) {
      const piece = drop === undefined ? chunk : chunk.subarray(0, Math.max(0, drop - sent));
      if (piece.length && !(await write(res, piece))) return;
      count(piece.length);
      sent += piece.length;
      if (drop !== undefined && sent >= drop) {
        // Mid-body: the page gets fewer bytes than content-length said, then a network error.
        // The pause lets the page read what was sent first (Chromium drops body bytes it has
        // not handed to the page yet when the connection fails).
        await new Promise((ok) => setTimeout(ok, 1000));
        res.socket?.destroy();
        return;
      }
      if (bytesPerSecond) await new Promise((ok) => setTimeout(ok, (piece.length / bytesPerSecond) * 1000));
    }
    res.end();
  } finally {
    stream.destroy();
  }
}

/** Why the browser tests cannot run here, or null. */
export async function browserSkipReason() {
  if (!existsSync(chromiumPath)) return `Chromium not found at ${chromiumPath} (apt-get install -y chromium, or set TANDEM_CHROMIUM)`;
  try {
    await import('playwright-core');
  } catch {
    return 'playwright-core is not installed (npm install)';
  }
  if (!existsSync(join(repoRoot, 'pkg/tandem_web_bg.wasm'))) return 'pkg/ is not built (npm run build)';
  return null;
}

/** A fresh headless Chromium profile (empty Cache API) and a page on the test server. */
export async function openBrowser(origin) {
  const { chromium } = await import('playwright-core');
  const dir = mkdtempSync(join(tmpdir(), 'tandem-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--no-sandbox',
      '--enable-unsafe-webgpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      '--disable-dev-shm-usage',
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  await page.goto(`${origin}/tests/browser/page.html`);
  return {
    page,
    logs,
    /** The profile directory (on the browser process's command line: benchmarks find it by it). */
    dir,
    close: async () => {
      await context.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Why WebGPU cannot be used in `page`, or null. */
export async function webgpuSkipReason(page) {
  return page.evaluate(async () => {
    if (!navigator.gpu) return 'navigator.gpu is missing (Chromium without --enable-unsafe-webgpu?)';
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? null : 'navigator.gpu.requestAdapter() returned null';
  });
}

/**
 * `reason` (a model a test needs is missing) as a SKIP reason; under TANDEM_REQUIRE_MODELS=1
 * (as .ci/run sets it, and as the cargo tests read it) a thrown error instead, so that a test
 * cannot pass by not running where the models are supposed to be.
 */
export function modelMissing(reason) {
  const required = process.env.TANDEM_REQUIRE_MODELS;
  if (required && required !== '0') throw new Error(`${reason}; TANDEM_REQUIRE_MODELS=1 requires every test model to be present`);
  return reason;
}

/** stories260K's files as served by the test server, or a SKIP reason. */
export function stories260K() {
  const dir = join(sharedModels, 'stories260K');
  const names = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'];
  const missing = [...names, 'reference_greedy.json'].filter((n) => !existsSync(join(dir, n)));
  if (missing.length) return { skip: modelMissing(`stories260K files missing in ${dir}: ${missing.join(', ')} (set TANDEM_SHARED_MODELS)`) };
  return { dir, urls: names.map((n) => `/models/stories260K/${n}`) };
}

/** The default model's file in tandem's cache (SmolLM2-135M-Instruct Q4_1), or a SKIP reason. */
export function defaultModel() {
  const file = join(modelCache, 'SmolLM2-135M-Instruct.Q4_1.gguf');
  if (!existsSync(file)) return { skip: modelMissing(`${file} not found (\`tandem inspect\` fetches it; or set TANDEM_CACHE_DIR)`) };
  return { file };
}

/** SmolLM2-135M-Instruct Q4_1 (the default model) as served at /cache-models/, or a SKIP reason. */
export function smolLM2() {
  const model = defaultModel();
  if (model.skip) return model;
  const reference = join(sharedModels, 'SmolLM2-135M-Instruct/reference.json');
  if (!existsSync(reference)) return { skip: modelMissing(`${reference} not found (set TANDEM_SHARED_MODELS)`) };
  return { url: '/cache-models/SmolLM2-135M-Instruct.Q4_1.gguf', bytes: statSync(model.file).size, reference };
}
