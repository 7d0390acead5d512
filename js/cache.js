// Model files as streams of bytes, kept in the Cache API so a second load of the same URL reads
// the browser's copy instead of the network. Runs in the worker (downloads) and on the page
// (list/delete). No model file is ever read into one ArrayBuffer: browsers cap those at 2 GiB.

export const CACHE_NAME = 'tandem-models-v1';

function cacheStorage() {
  return typeof caches === 'undefined' ? null : caches;
}

/** The file name a URL stands for: its last path segment ("model.safetensors"). */
export function fileNameOf(url) {
  const path = new URL(url, globalThis.location?.href).pathname;
  return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1)) || 'model';
}

function absolute(url) {
  return new URL(url, globalThis.location?.href).href;
}

/** The model cache, or null where the browser has no Cache API (an insecure context). */
export async function openModelCache() {
  const storage = cacheStorage();
  return storage ? storage.open(CACHE_NAME) : null;
}

/** The byte count a response's body will have, or null when unknown (or compressed in transit). */
export function bodySize(response) {
  const encoding = response.headers.get('content-encoding');
  const length = response.headers.get('content-length');
  if (length === null || (encoding && encoding !== 'identity')) return null;
  const n = Number(length);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

async function freeStorage() {
  try {
    const { quota, usage } = (await navigator.storage?.estimate?.()) ?? {};
    return quota ? Math.max(0, quota - (usage ?? 0)) : null;
  } catch {
    return null;
  }
}

const QUOTA_ADVICE = 'free space with deleteCachedModel() or load with { cache: false }';

/** The error for a download that does not fit: `bytes` is its size (or what arrived). */
async function quotaError(url, bytes) {
  const free = await freeStorage();
  const size = bytes === null ? 'too large' : megabytes(bytes);
  if (free !== null && (bytes === null || free < bytes)) {
    return new Error(`storage quota exceeded: ${url} is ${size} but only ${megabytes(free)} of browser storage is free; ${QUOTA_ADVICE}`);
  }
  // Some browsers report more free space than they then allow (Chromium hides the real quota).
  return new Error(`storage quota exceeded: ${url} is ${size} and the browser refused to store it; ${QUOTA_ADVICE}`);
}

/** Fetches `url`, failing with a message that names it. */
export async function download(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`download of ${url} failed: ${e.message}`);
  }
  if (!response.ok) {
    throw new Error(`download of ${url} failed: HTTP ${response.status} ${response.statusText}`);
  }
  return response;
}

/** Passes a stream through unchanged, calling `onBytes(total so far)` per chunk. */
function counting(onBytes) {
  let loaded = 0;
  return new TransformStream({
    transform(chunk, controller) {
      loaded += chunk.byteLength;
      onBytes(loaded);
      controller.enqueue(chunk);
    },
  });
}

/**
 * Makes sure `cache` holds `url`: a hit costs nothing; a miss is downloaded straight into the
 * Cache API (the browser streams it to disk, the page never holds it), calling
 * `onBytes(loaded, total)`. Fails with a clear message when the browser's storage is too small:
 * up front when the size is known, or when `cache.put` reports the quota.
 */
export async function ensureCached(cache, url, onBytes = () => {}) {
  url = absolute(url);
  if (await cache.match(url)) return;
  const response = await download(url);
  const size = bodySize(response);
  const free = size === null ? null : await freeStorage();
  if (free !== null && size > free) {
    response.body?.cancel().catch(() => {});
    throw await quotaError(url, size);
  }
  const headers = { 'content-type': 'application/octet-stream' };
  if (size !== null) headers['content-length'] = String(size);
  let loaded = 0;
  const body = response.body?.pipeThrough(
    counting((n) => {
      loaded = n;
      onBytes(n, size ?? n);
    }),
  );
  try {
    await cache.put(url, new Response(body ?? null, { headers }));
  } catch (e) {
    if (e?.name === 'QuotaExceededError') throw await quotaError(url, size ?? loaded);
    throw new Error(`download of ${url} into the browser cache failed: ${e.message}`);
  }
}

/** `url` from the cache as `{ body, size }` (size null when unknown), or null on a miss. */
export async function openCached(cache, url) {
  const hit = await cache.match(absolute(url));
  return hit ? { body: hit.body, size: bodySize(hit) } : null;
}

/** Every cached model file: `[{ url, bytes }]`. */
export async function listCachedModels() {
  const cache = await openModelCache();
  if (!cache) return [];
  const out = [];
  for (const request of await cache.keys()) {
    const response = await cache.match(request);
    out.push({ url: request.url, bytes: Number(response?.headers.get('content-length')) || 0 });
  }
  return out;
}

/** Removes `url` from the cache; resolves to whether it was there. */
export async function deleteCachedModel(url) {
  const cache = await openModelCache();
  return cache ? cache.delete(absolute(url)) : false;
}
