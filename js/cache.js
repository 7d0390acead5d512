// Model files as streams of bytes, kept in the Cache API so a second load of the same URL reads
// the browser's copy instead of the network. Runs in the worker (downloads) and on the page
// (list/delete). No model file is ever read into one ArrayBuffer: browsers cap those at 2 GiB.
//
// A download is stored as parts, each its own cache entry (`<url>?tandem-part=<byte offset>`,
// PART_BYTES each), and, once every part is in and the file checked, a small JSON manifest
// (`<url>?tandem-file`) that lists them. `cache.put` stores an entry only when its whole body
// arrived, so a download cut off keeps every part it finished, and the next one (in this page
// or after a reload) asks for the rest with `Range: bytes=<held>-`. A file is complete only
// with its manifest. Older versions stored a file whole under its plain URL; such an entry
// still counts as cached.
//
// Asked to (`opfsMinBytes`), a file that large or larger downloaded in a dedicated worker goes
// to the Origin Private File System instead (js/opfs.js says why that is not the default), with
// the same semantics:
// its bytes are flushed part by part and counted in a small entry (`<url>?tandem-opfs`) that a
// cut-off download resumes from, and the manifest, written once the file is complete and
// checked, names the file.

import { readAhead } from './read-ahead.js';
import { OPFS_MIN_BYTES, canWriteOpfs, openOpfsReader, openOpfsWriter, opfsName, opfsSize, removeOpfsFile } from './opfs.js';

export const CACHE_NAME = 'tandem-models-v1';

/** Bytes per cache entry of a download: what a cut-off loses at most. */
export const PART_BYTES = 32 << 20;

function cacheStorage() {
  return typeof caches === 'undefined' ? null : caches;
}

/** The file name a URL stands for: its last path segment ("model.safetensors"). */
export function fileNameOf(url) {
  const path = new URL(url, globalThis.location?.href).pathname;
  return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1)) || 'model';
}

/** `url` resolved against the page, without a fragment (the Cache API ignores those). */
function absolute(url) {
  const u = new URL(url, globalThis.location?.href);
  u.hash = '';
  return u.href;
}

function derived(url, param) {
  return `${url}${url.includes('?') ? '&' : '?'}${param}`;
}
const partKey = (url, offset) => derived(url, `tandem-part=${offset}`);
const fileKey = (url) => derived(url, 'tandem-file');
const opfsKey = (url) => derived(url, 'tandem-opfs');
/** A cache key of ours: `[url, 'file' | 'opfs' | 'part' | null]` (null: an old whole-file entry). */
function parseKey(key) {
  const m = /[?&]tandem-(file|opfs|part=\d+)$/.exec(key);
  if (!m) return [key, null];
  return [key.slice(0, m.index), m[1].startsWith('part') ? 'part' : m[1]];
}

/** The model cache, or null where the browser has no Cache API (an insecure context). */
export async function openModelCache() {
  const storage = cacheStorage();
  return storage ? storage.open(CACHE_NAME) : null;
}

function wholeNumber(text) {
  if (text === null || text === '') return null;
  const n = Number(text);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

/** The byte count a response's body will have, or null when unknown (or compressed in transit). */
export function bodySize(response) {
  const encoding = response.headers.get('content-encoding');
  if (encoding && encoding !== 'identity') return null;
  return wholeNumber(response.headers.get('content-length'));
}

/** A 206's `Content-Range: bytes start-end/total` as `{ start, total }` (total null for `*`). */
function contentRange(response) {
  const text = response.headers.get('content-range');
  // Cross-origin, a server may not expose the header: the range is then the one asked for.
  if (text === null) return null;
  const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(text.trim());
  return m ? { start: Number(m[1]), total: m[2] === '*' ? null : Number(m[2]) } : { start: NaN, total: null };
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

/**
 * The error for a download that does not fit: `bytes` is the file's size (or what arrived;
 * null when unknown) and `missing` what it still needed beyond the parts already cached.
 */
async function quotaError(url, bytes, missing = bytes) {
  const free = await freeStorage();
  const size = bytes === null ? 'too large' : missing === bytes ? megabytes(bytes) : `${megabytes(bytes)}, ${megabytes(missing)} of it not yet cached,`;
  if (free !== null && (missing === null || free < missing)) {
    return new Error(`storage quota exceeded: ${url} is ${size} but only ${megabytes(free)} of browser storage is free; ${QUOTA_ADVICE}`);
  }
  // Some browsers report more free space than they then allow (Chromium hides the real quota).
  return new Error(`storage quota exceeded: ${url} is ${size} and the browser refused to store it; ${QUOTA_ADVICE}`);
}

/** Fetches `url` from byte `from` on (a Range request past 0), failing with a message that names it. */
async function request(url, from = 0) {
  let response;
  try {
    response = await fetch(url, from > 0 ? { headers: { range: `bytes=${from}-` } } : undefined);
  } catch (e) {
    throw new Error(`download of ${url} failed: ${e.message}`);
  }
  // 416: the held bytes reach past the file's end (it changed); the caller starts over.
  if (!response.ok && !(from > 0 && response.status === 416)) {
    throw new Error(`download of ${url} failed: HTTP ${response.status} ${response.statusText}`);
  }
  return response;
}

/**
 * The size of `url` before it downloads: the cache's when it holds the whole file, else (with
 * `ask`) from a one-byte Range request (a 206's Content-Range; a 200's Content-Length, its body
 * left unread); null when unknown.
 */
export async function sizeOf(cache, url, ask) {
  url = absolute(url);
  const held = cache ? await completeFile(cache, url).catch(() => null) : null;
  if (Number.isSafeInteger(held?.bytes)) return held.bytes;
  if (!ask) return null;
  let response;
  try {
    response = await fetch(url, { headers: { range: 'bytes=0-0' } });
  } catch (e) {
    throw new Error(`download of ${url} failed: ${e.message}`);
  }
  if (!response.ok) throw new Error(`download of ${url} failed: HTTP ${response.status} ${response.statusText}`);
  const size = response.status === 206 ? contentRange(response)?.total ?? null : bodySize(response);
  response.body?.cancel().catch(() => {});
  return size;
}

/** Fetches `url`, failing with a message that names it. */
export function download(url) {
  return request(url);
}

/** Whether `response` (a new download of `url`) has the same file as the held parts say. */
function sameFile(held, response, total) {
  const same = (a, b) => a === null || b === null || a === b;
  return same(held.total, total) && same(held.etag, response.headers.get('etag')) && same(held.lastModified, response.headers.get('last-modified'));
}

/**
 * The parts of `url` held from byte 0 on, up to the first gap: `{ parts: [{ offset, length }],
 * bytes, total, etag, lastModified }`; the file's size and validators as its download said.
 */
async function heldParts(cache, url) {
  const held = { parts: [], bytes: 0, total: null, etag: null, lastModified: null };
  for (;;) {
    const hit = await cache.match(partKey(url, held.bytes));
    const length = hit ? wholeNumber(hit.headers.get('content-length')) : null;
    if (!length) break;
    if (!held.parts.length) {
      held.total = wholeNumber(hit.headers.get('x-tandem-total'));
      held.etag = hit.headers.get('x-tandem-etag');
      held.lastModified = hit.headers.get('x-tandem-last-modified');
    }
    held.parts.push({ offset: held.bytes, length });
    held.bytes += length;
  }
  return held;
}

/**
 * A download of `url` into OPFS not yet complete, as `heldParts` says it (no parts; `opfs`: the
 * file's name), or null. Only the bytes flushed and counted hold: a crash may leave more.
 */
async function heldInOpfs(cache, url) {
  const state = await (await cache.match(opfsKey(url)))?.json().catch(() => null);
  if (!state || typeof state.name !== 'string') return null;
  const size = await opfsSize(state.name);
  const bytes = Math.min(wholeNumber(String(state.bytes)) ?? 0, size ?? 0);
  return { parts: [], bytes, total: state.total ?? null, etag: state.etag ?? null, lastModified: state.lastModified ?? null, opfs: state.name };
}

/** Removes every entry of `url` (manifest, parts, an OPFS file); whether there was one. */
async function removeFile(cache, url) {
  let removed = false;
  for (const key of await cache.keys()) {
    if (parseKey(key.url)[0] === url) removed = (await cache.delete(key)) || removed;
  }
  const name = await opfsName(url);
  return (await removeOpfsFile(name)) || removed;
}

function damaged(url, why) {
  return new Error(`${url} in the browser cache is damaged (${why}); removed it from the cache, the next load downloads it again`);
}

/**
 * `url` complete in `cache` as `{ bytes, sha256, parts }` (parts null for an old whole entry;
 * sha256 null until checked once), or null. A manifest whose parts are not all there is
 * removed, with an error.
 */
async function completeFile(cache, url) {
  const manifest = await cache.match(fileKey(url));
  if (!manifest) {
    const whole = await cache.match(url);
    return whole ? { bytes: bodySize(whole), sha256: null, parts: null } : null;
  }
  const file = await manifest.json().catch(() => null);
  let why = file && (Array.isArray(file.parts) || typeof file.opfs === 'string') && Number.isSafeInteger(file.bytes) ? null : 'its manifest is unreadable';
  if (!why && file.opfs) {
    const size = await opfsSize(file.opfs);
    if (size !== file.bytes) why = size === null ? 'its file is missing' : `its file holds ${size} bytes, not ${file.bytes}`;
    if (!why) return file;
  }
  let offset = 0;
  for (const part of why ? [] : file.parts) {
    if (part.offset !== offset || !(part.length > 0)) why = `its part list has a gap at byte ${offset}`;
    else if (!(await cache.match(partKey(url, offset)))) why = `the part at byte ${offset} is missing`;
    if (why) break;
    offset += part.length;
  }
  if (!why && offset !== file.bytes) why = `its parts hold ${offset} bytes, not ${file.bytes}`;
  if (why) {
    await removeFile(cache, url);
    throw damaged(url, why);
  }
  return file;
}

/**
 * The bytes of a complete file, part after part, as one stream. Each part must hold the bytes
 * the manifest says (an old whole entry: its content-length); otherwise the file is removed
 * and the stream fails with why.
 */
function readFile(cache, url, file, whole) {
  if (file.opfs) return readOpfsFile(cache, url, file);
  if (!file.parts) {
    let n = 0;
    const check = new TransformStream({
      transform(chunk, controller) {
        n += chunk.byteLength;
        controller.enqueue(chunk);
      },
      async flush() {
        if (file.bytes !== null && n !== file.bytes) {
          await removeFile(cache, url);
          throw damaged(url, `it holds ${n} bytes, not the ${file.bytes} it was stored with`);
        }
      },
    });
    return whole.body ? whole.body.pipeThrough(check) : null;
  }
  let index = 0;
  let reader = null;
  let got = 0;
  const fail = async (controller, why) => {
    reader?.cancel().catch(() => {});
    await removeFile(cache, url);
    controller.error(damaged(url, why));
  };
  return new ReadableStream({
    async pull(controller) {
      for (;;) {
        const part = file.parts[index];
        if (!part) return controller.close();
        if (!reader) {
          const hit = await cache.match(partKey(url, part.offset));
          if (!hit?.body) return fail(controller, `the part at byte ${part.offset} is missing`);
          reader = hit.body.getReader();
          got = 0;
        }
        const step = await reader.read();
        if (step.done) {
          if (got !== part.length) return fail(controller, `the part at byte ${part.offset} holds ${got} bytes, not ${part.length}`);
          reader = null;
          index += 1;
          continue;
        }
        got += step.value.byteLength;
        if (got > part.length) return fail(controller, `the part at byte ${part.offset} holds more than ${part.length} bytes`);
        return controller.enqueue(step.value);
      }
    },
    cancel(reason) {
      return reader?.cancel(reason);
    },
  });
}

/** An OPFS file's bytes as a stream, with their count checked as `readFile` checks parts. */
function readOpfsFile(cache, url, file) {
  let reader = null;
  let got = 0;
  const fail = async (controller, why) => {
    await removeFile(cache, url);
    controller.error(damaged(url, why));
  };
  return new ReadableStream({
    async pull(controller) {
      reader ??= (await openOpfsReader(file.opfs))?.getReader();
      if (!reader) return fail(controller, 'its file is missing');
      const step = await reader.read();
      if (step.done) {
        if (got !== file.bytes) return fail(controller, `it holds ${got} bytes, not the ${file.bytes} it was stored with`);
        return controller.close();
      }
      got += step.value.byteLength;
      controller.enqueue(step.value);
    },
    cancel(reason) {
      return reader?.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** The sha256 of a stream's bytes (hex), with `createHash()` giving an incremental hasher. */
async function digestOf(body, createHash) {
  const hash = createHash();
  try {
    if (body) await body.pipeTo(new WritableStream({ write: (chunk) => hash.update(chunk) }));
  } catch (e) {
    hash.free?.();
    throw e;
  }
  return hash.finish();
}

function digestError(url, expected, actual) {
  return new Error(`${url} failed its check: sha256 ${actual}, expected ${expected}; removed it from the browser cache, the next load downloads it again`);
}

/** Runs `work` while no other tab or worker of this origin works on `url` (Web Locks). */
function exclusively(url, work) {
  const locks = globalThis.navigator?.locks;
  return locks ? locks.request(`tandem-download ${url}`, work) : work();
}

/**
 * Makes sure `cache` holds `url` complete and checked. A hit costs nothing (its sha256 is
 * compared when `sha256`, 64 hex digits, is given); a miss is downloaded into the cache part
 * by part, resuming after the parts an earlier, cut-off download left. One tab or worker at a
 * time downloads a URL: another waits, then finds it cached. The file's size must be the one
 * the server announced; a file that fails a check is removed, with an error.
 * @param options `{ sha256, partBytes, opfsMinBytes, createHash, onBytes(loaded, total, fresh) }`:
 *   `opfsMinBytes`: from this size on a file goes to OPFS where it can (default never);
 *   `fresh`
 *   counts the bytes of this download only (not those found cached); `createHash()` gives an
 *   incremental SHA-256 (`update(bytes)`, `finish()` to hex), needed with `sha256`.
 */
export async function ensureCached(cache, url, options = {}) {
  url = absolute(url);
  const { sha256 = null, createHash } = options;
  await exclusively(url, async () => {
    let file = await completeFile(cache, url);
    if (!file) file = await downloadParts(cache, url, options);
    if (!sha256 || file.sha256 === sha256) return;
    // Checked the first time a digest is asked for (for a download, as it arrived).
    const actual = file.sha256 ?? (await digestOf(readFile(cache, url, file, await cache.match(url)), createHash));
    if (actual !== sha256) {
      await removeFile(cache, url);
      throw digestError(url, sha256, actual);
    }
    if (file.parts || file.opfs) await cache.put(fileKey(url), manifest({ ...file, sha256: actual }));
  });
}

function manifest(file) {
  return new Response(JSON.stringify(file), { headers: { 'content-type': 'application/json' } });
}

/** The response for the rest of `url` after the held parts, deciding whether they still count. */
async function resume(cache, url, held) {
  if (held.total !== null && held.bytes >= held.total) {
    // Every byte is here (the manifest was never written): nothing to fetch.
    if (held.bytes === held.total) return { held, response: null, start: held.bytes, total: held.total };
  } else {
    const response = await request(url, held.bytes);
    if (held.bytes === 0) return { held, response, start: 0, total: bodySize(response) };
    if (response.status === 206) {
      const size = bodySize(response);
      const range = contentRange(response) ?? { start: held.bytes, total: size === null ? null : held.bytes + size };
      if (range.start === held.bytes && bodySize(response) !== null && sameFile(held, response, range.total)) {
        return { held, response, start: held.bytes, total: range.total ?? held.total };
      }
    } else if (response.status === 200 && sameFile(held, response, bodySize(response))) {
      // The server ignored the Range: the held bytes arrive again and are skipped.
      return { held, response, start: 0, total: bodySize(response) };
    }
    response.body?.cancel().catch(() => {});
  }
  // The file changed (or the server answered oddly): its parts no longer count.
  await removeFile(cache, url);
  const empty = { parts: [], bytes: 0, total: null, etag: null, lastModified: null };
  const response = await request(url);
  return { held: empty, response, start: 0, total: bodySize(response) };
}

/**
 * Downloads what `cache` lacks of `url` as parts, or into an OPFS file (a large file, where
 * this context can write one; a download begun there goes on there); then writes its manifest
 * and returns it.
 */
async function downloadParts(cache, url, { sha256 = null, partBytes = PART_BYTES, opfsMinBytes = OPFS_MIN_BYTES, createHash, onBytes = () => {} }) {
  let begun = await heldInOpfs(cache, url);
  if (begun && !canWriteOpfs()) {
    // Begun in a dedicated worker, and this context cannot write the file: start over here.
    await removeFile(cache, url);
    begun = null;
  }
  const { held, response, start, total } = await resume(cache, url, begun ?? (await heldParts(cache, url)));
  const reader = response?.body?.getReader();
  const read = reader ? readAhead(reader, Math.max(partBytes, 8 << 20)) : async () => null;
  const missing = total === null ? null : total - held.bytes;
  const free = missing === null ? null : await freeStorage();
  if (free !== null && missing > free) {
    reader?.cancel().catch(() => {});
    throw await quotaError(url, total, missing);
  }
  // A response from byte 0 is hashed as it arrives; a resumed one is read back at the end.
  let hash = sha256 && start === 0 && reader ? createHash() : null;
  let leftover = null;
  let cut = null;
  const next = async () => {
    if (leftover) {
      const chunk = leftover;
      leftover = null;
      return chunk;
    }
    let chunk;
    try {
      chunk = await read();
    } catch (e) {
      cut = e;
      throw e;
    }
    if (chunk) hash?.update(chunk);
    return chunk;
  };
  const headers = (length) => ({
    'content-type': 'application/octet-stream',
    'content-length': String(length),
    'x-tandem-total': total === null ? '' : String(total),
    'x-tandem-etag': response?.headers.get('etag') ?? held.etag ?? '',
    'x-tandem-last-modified': response?.headers.get('last-modified') ?? held.lastModified ?? '',
  });
  const parts = [...held.parts];
  let offset = held.bytes;
  let written = 0;
  let file = null;
  const opfs = held.opfs ?? (held.bytes === 0 && total !== null && total >= opfsMinBytes && canWriteOpfs() ? await opfsName(url) : null);
  let writer = null;
  const etag = response?.headers.get('etag') ?? held.etag ?? null;
  const lastModified = response?.headers.get('last-modified') ?? held.lastModified ?? null;
  const counted = (bytes) => manifest({ name: opfs, total, etag, lastModified, bytes });
  try {
    if (opfs) {
      writer = await openOpfsWriter(opfs, held.bytes);
      await cache.put(opfsKey(url), counted(held.bytes));
    }
    for (let skip = held.bytes - start; skip > 0; ) {
      const chunk = await next();
      if (!chunk) throw new Error(`the server sent ${held.bytes - start - skip} bytes, fewer than the ${held.bytes} already cached`);
      if (chunk.byteLength > skip) leftover = chunk.subarray(skip);
      skip -= Math.min(skip, chunk.byteLength);
    }
    onBytes(offset, total ?? offset, 0);
    for (;;) {
      const first = total !== null && offset === total ? null : await next();
      if (!first) break;
      leftover = first;
      const length = total === null ? partBytes : Math.min(partBytes, total - offset);
      written = 0;
      if (writer) {
        // The same part as a cache entry would be; counted once it is flushed.
        while (written < length) {
          const chunk = await next();
          if (!chunk) break;
          const piece = chunk.byteLength > length - written ? chunk.subarray(0, length - written) : chunk;
          if (piece !== chunk) leftover = chunk.subarray(piece.byteLength);
          writer.write(piece);
          written += piece.byteLength;
          onBytes(offset + written, total, offset + written - held.bytes);
        }
        writer.flush();
        if (written < length) throw new Error(`the server sent ${offset + written} of the ${total} bytes it announced`);
        offset += written;
        written = 0;
        await cache.put(opfsKey(url), counted(offset));
        continue;
      }
      const body = new ReadableStream({
        async pull(controller) {
          const chunk = await next();
          if (!chunk) return controller.close();
          const piece = chunk.byteLength > length - written ? chunk.subarray(0, length - written) : chunk;
          if (piece !== chunk) leftover = chunk.subarray(piece.byteLength);
          written += piece.byteLength;
          controller.enqueue(piece);
          onBytes(offset + written, total ?? offset + written, offset + written - held.bytes);
          if (written === length) controller.close();
        },
      }, { highWaterMark: 0 });
      await cache.put(partKey(url, offset), new Response(body, { headers: headers(length) }));
      if (written < length && total !== null) {
        await cache.delete(partKey(url, offset));
        throw new Error(`the server sent ${offset + written} of the ${total} bytes it announced`);
      }
      parts.push({ offset, length: written });
      offset += written;
    }
    writer?.close();
    writer = null;
    if (total !== null && (await next())) {
      await removeFile(cache, url);
      throw new Error(`the server sent more than the ${total} bytes it announced; removed it from the browser cache`);
    }
    const digest = hash?.finish() ?? null;
    hash = null; // finish() freed it
    file = opfs ? { url, bytes: offset, sha256: digest, opfs } : { url, bytes: offset, sha256: digest, parts };
    await cache.put(fileKey(url), manifest(file));
    if (opfs) await cache.delete(opfsKey(url));
  } catch (e) {
    writer?.close();
    reader?.cancel().catch(() => {});
    hash?.free?.();
    if (e?.name === 'QuotaExceededError') {
      const bytes = total ?? offset + written;
      throw await quotaError(url, bytes, bytes - held.bytes);
    }
    const size = total === null ? '' : ` of ${megabytes(total)}`;
    const kept = offset > 0 ? `; the ${megabytes(offset)} in the browser cache are kept and the next load resumes from there` : '';
    throw new Error(`download of ${url} ${cut ? 'was cut off' : 'failed'} after ${megabytes(offset + written)}${size}: ${(cut ?? e).message}${kept}`);
  }
  return file;
}

/** `url` from the cache as `{ body, size }` (size null when unknown), or null on a miss. */
export async function openCached(cache, url) {
  url = absolute(url);
  const file = await completeFile(cache, url);
  if (!file) return null;
  return { body: readFile(cache, url, file, file.parts ? null : await cache.match(url)), size: file.bytes };
}

/**
 * Every cached model file: `[{ url, bytes }]`, and a download cut off before its end as
 * `{ url, bytes (held), total (null when unknown), partial: true }`.
 */
export async function listCachedModels() {
  const cache = await openModelCache();
  if (!cache) return [];
  // Complete files by their manifests, older whole entries, and parts without a manifest.
  const files = new Map();
  const partial = new Set();
  for (const request of await cache.keys()) {
    const [url, kind] = parseKey(request.url);
    if (kind === 'file') {
      const file = await (await cache.match(request))?.json().catch(() => null);
      files.set(url, { url, bytes: file?.bytes ?? 0 });
    } else if (kind === 'opfs') {
      partial.add(url);
    } else if (kind === null) {
      const response = await cache.match(request);
      if (!files.has(url)) files.set(url, { url, bytes: wholeNumber(response?.headers.get('content-length') ?? null) ?? 0 });
    } else {
      partial.add(url);
    }
  }
  for (const url of partial) {
    if (files.has(url)) continue;
    const held = (await heldInOpfs(cache, url)) ?? (await heldParts(cache, url));
    files.set(url, { url, bytes: held.bytes, total: held.total, partial: true });
  }
  return [...files.values()];
}

/** Removes `url` from the cache (all its parts); resolves to whether it was there. */
export async function deleteCachedModel(url) {
  const cache = await openModelCache();
  return cache ? removeFile(cache, absolute(url)) : false;
}
