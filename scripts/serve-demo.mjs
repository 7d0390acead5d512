#!/usr/bin/env node
// Serves the demo page on 127.0.0.1: the repository at / (the page is /www/, the package
// /js/ and /pkg/), and the models at /models/, looked up first in tandem's model cache
// ($TANDEM_CACHE_DIR/models, default ~/.cache/tandem/models) and then in the shared models
// (../shared/models, or $TANDEM_SHARED_MODELS). `npm run demo` builds and runs this.
//
//   PORT=8080 node scripts/serve-demo.mjs   then open http://127.0.0.1:8080/www/

import { createServer } from 'node:http';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(fileURLToPath(new URL('..', import.meta.url)));

/** Where /models/ is looked up, in order. */
export function modelRoots() {
  const cache = process.env.TANDEM_CACHE_DIR
    ? resolve(process.env.TANDEM_CACHE_DIR)
    : join(homedir(), '.cache', 'tandem');
  const shared = process.env.TANDEM_SHARED_MODELS
    ? resolve(process.env.TANDEM_SHARED_MODELS)
    : resolve(repoRoot, '../shared/models');
  return [join(cache, 'models'), shared];
}

const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.md': 'text/plain; charset=utf-8',
  '.ts': 'text/plain; charset=utf-8',
};

/** The file under `base` that `rel` names, or null (outside `base`, missing, not a file). */
function inside(base, rel) {
  const file = normalize(join(base, rel));
  if (file !== base && !file.startsWith(base + sep)) return null;
  try {
    return statSync(file).isFile() ? file : null;
  } catch {
    return null;
  }
}

/**
 * The request handler. `roots` overrides where /models/ is looked up; `onRequest(path)` sees
 * every request (tests count them).
 */
export function createHandler({ roots = modelRoots(), onRequest } = {}) {
  return (req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('bad request');
      return;
    }
    onRequest?.(path, req.method);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' }).end('method not allowed');
      return;
    }
    if (path === '/') {
      res.writeHead(302, { location: '/www/' }).end();
      return;
    }
    let file = null;
    if (path.startsWith('/models/')) {
      const rel = path.slice('/models/'.length);
      for (const root of roots) if ((file = root && existsSync(root) ? inside(root, rel) : null)) break;
    } else {
      file = inside(repoRoot, path.endsWith('/') ? path.slice(1) + 'index.html' : path.slice(1));
    }
    if (!file) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path}`);
      return;
    }
    const size = statSync(file).size;
    res.writeHead(200, {
      'content-type': types[extname(file)] ?? 'application/octet-stream',
      'content-length': size,
      'cache-control': 'no-store',
    });
    if (req.method === 'HEAD') return res.end();
    createReadStream(file).pipe(res);
  };
}

/** Starts the server on 127.0.0.1:`port` (0: a free port); resolves to `{ origin, server, close }`. */
export async function startDemoServer({ port = 0, ...options } = {}) {
  const server = createServer(createHandler(options));
  server.keepAliveTimeout = 1000;
  server.requestTimeout = 120_000;
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, '127.0.0.1', ok);
  });
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    server,
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(ok); }),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const port = Number(process.env.PORT ?? 8080);
  if (!existsSync(join(repoRoot, 'pkg/tandem_web_bg.wasm'))) console.warn('warning: pkg/ is not built (npm run build)');
  const { origin } = await startDemoServer({ port });
  console.log(`tandem demo: ${origin}/www/`);
  for (const root of modelRoots()) console.log(`  /models/ <- ${root}${existsSync(root) ? '' : ' (missing)'}`);
}
