// Model downloads, kept in the Cache API so a second load of the same URL reads the browser's
// copy instead of the network. Runs in the worker (downloads) and on the page (list/delete).

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

/**
 * The bytes at `url`, from the cache when it holds them, else downloaded (and then cached).
 * `onProgress({ stage, loaded, total, url })` is called with stage "cache" or "download".
 * A cache that cannot store the file (quota) does not fail the load: the file is used anyway
 * and `onProgress` gets stage "cache-skipped" with a `warning`.
 */
export async function fetchCached(url, onProgress = () => {}) {
  url = absolute(url);
  const storage = cacheStorage();
  const cache = storage ? await storage.open(CACHE_NAME) : null;
  const hit = cache ? await cache.match(url) : undefined;
  if (hit) {
    const total = Number(hit.headers.get('content-length')) || 0;
    onProgress({ stage: 'cache', loaded: 0, total, url });
    const bytes = new Uint8Array(await hit.arrayBuffer());
    onProgress({ stage: 'cache', loaded: bytes.byteLength, total: bytes.byteLength, url });
    return bytes;
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`download of ${url} failed: ${e.message}`);
  }
  if (!response.ok) {
    throw new Error(`download of ${url} failed: HTTP ${response.status} ${response.statusText}`);
  }
  const total = Number(response.headers.get('content-length')) || 0;
  const bytes = await readBody(response, total, (loaded) => onProgress({ stage: 'download', loaded, total: total || loaded, url }));
  if (cache) {
    try {
      const headers = { 'content-type': 'application/octet-stream', 'content-length': String(bytes.byteLength) };
      await cache.put(url, new Response(bytes, { headers }));
    } catch (e) {
      const quota = e && e.name === 'QuotaExceededError';
      const warning = quota
        ? `storage quota exceeded: ${url} (${bytes.byteLength} bytes) was not cached and will be downloaded again next time`
        : `could not cache ${url}: ${e.message}`;
      onProgress({ stage: 'cache-skipped', loaded: bytes.byteLength, total: bytes.byteLength, url, warning });
    }
  }
  return bytes;
}

async function readBody(response, total, progress) {
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    progress(bytes.byteLength);
    return bytes;
  }
  const reader = response.body.getReader();
  // One allocation when the size is known; otherwise chunks, joined at the end.
  let out = total > 0 ? new Uint8Array(total) : null;
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (out && loaded + value.byteLength <= out.byteLength) {
      out.set(value, loaded);
    } else {
      if (out) {
        chunks.push(out.subarray(0, loaded));
        out = null;
      }
      chunks.push(value);
    }
    loaded += value.byteLength;
    progress(loaded);
  }
  if (out) return loaded === out.byteLength ? out : out.subarray(0, loaded);
  const joined = new Uint8Array(loaded);
  let offset = 0;
  for (const c of chunks) {
    joined.set(c, offset);
    offset += c.byteLength;
  }
  return joined;
}

/** Every cached model file: `[{ url, bytes }]`. */
export async function listCachedModels() {
  const storage = cacheStorage();
  if (!storage) return [];
  const cache = await storage.open(CACHE_NAME);
  const out = [];
  for (const request of await cache.keys()) {
    const response = await cache.match(request);
    out.push({ url: request.url, bytes: Number(response?.headers.get('content-length')) || 0 });
  }
  return out;
}

/** Removes `url` from the cache; resolves to whether it was there. */
export async function deleteCachedModel(url) {
  const storage = cacheStorage();
  if (!storage) return false;
  const cache = await storage.open(CACHE_NAME);
  return cache.delete(absolute(url));
}
