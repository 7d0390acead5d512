// The storage benchmark's worker (scripts/bench-storage.mjs drives it through
// bench-storage.html): one large file written and read back per message, through the Cache API
// in parts as js/cache.js stores downloads, or through the Origin Private File System. It runs
// in a dedicated worker, as tandem's downloads do, where OPFS offers its synchronous access
// handles.

/** Bytes per chunk of the incoming stream (a network body arrives in pieces of this order). */
const CHUNK = 1 << 20;
/** Bytes read back per step of the engine's load (js/load.js pushes 8 MiB at most at once). */
const READ = 8 << 20;
const CACHE = 'tandem-bench-storage';
const FILE = 'bench.bin';

let pattern = null;

/** Random bytes (nothing a store could compress), one CHUNK's worth, made once. */
function randomChunk() {
  if (!pattern) {
    pattern = new Uint8Array(CHUNK);
    for (let at = 0; at < CHUNK; at += 65536) crypto.getRandomValues(pattern.subarray(at, at + 65536));
  }
  return pattern;
}

/** `bytes` bytes as a stream of fresh CHUNK-sized buffers, as a download's body gives them. */
function incoming(bytes) {
  const source = randomChunk();
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      const n = Math.min(CHUNK, bytes - sent);
      controller.enqueue(source.slice(0, n));
      sent += n;
      if (sent === bytes) controller.close();
    },
  }, { highWaterMark: 0 });
}

const partKey = (offset) => `/tandem-bench-storage/bench.bin?tandem-part=${offset}`;

/** As js/cache.js: one cache entry per `partBytes` of the stream, each put as its bytes arrive. */
async function writeCache(bytes, partBytes) {
  const cache = await caches.open(CACHE);
  const reader = incoming(bytes).getReader();
  let leftover = null;
  for (let offset = 0; offset < bytes; offset += partBytes) {
    const length = Math.min(partBytes, bytes - offset);
    let written = 0;
    const body = new ReadableStream({
      async pull(controller) {
        let chunk = leftover ?? (await reader.read()).value;
        leftover = null;
        if (chunk.byteLength > length - written) {
          leftover = chunk.subarray(length - written);
          chunk = chunk.subarray(0, length - written);
        }
        written += chunk.byteLength;
        controller.enqueue(chunk);
        if (written === length) controller.close();
      },
    }, { highWaterMark: 0 });
    await cache.put(partKey(offset), new Response(body, { headers: { 'content-type': 'application/octet-stream', 'content-length': String(length) } }));
  }
}

/** Copies a stream's chunks into `out` from `at` on; returns where it ended. */
async function drain(body, out, at) {
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return at;
    out.set(value, at);
    at += value.byteLength;
  }
}

async function readCache(bytes, partBytes) {
  const cache = await caches.open(CACHE);
  const out = new Uint8Array(bytes);
  let at = 0;
  for (let offset = 0; offset < bytes; offset += partBytes) {
    const hit = await cache.match(partKey(offset));
    if (!hit) throw new Error(`the part at ${offset} is missing`);
    at = await drain(hit.body, out, at);
  }
  return out;
}

async function fileHandle(create = false) {
  const dir = await navigator.storage.getDirectory();
  return dir.getFileHandle(FILE, { create });
}

/** OPFS through a synchronous access handle: each chunk written at its offset as it arrives. */
async function writeOpfsSync(bytes) {
  const handle = await (await fileHandle(true)).createSyncAccessHandle();
  try {
    handle.truncate(0);
    const reader = incoming(bytes).getReader();
    let at = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      at += handle.write(value, { at });
    }
    handle.flush();
  } finally {
    handle.close();
  }
}

async function readOpfsSync(bytes) {
  const handle = await (await fileHandle()).createSyncAccessHandle();
  try {
    const size = handle.getSize();
    if (size !== bytes) throw new Error(`the file holds ${size} bytes, not ${bytes}`);
    const out = new Uint8Array(bytes);
    for (let at = 0; at < bytes; ) at += handle.read(out.subarray(at, at + READ), { at });
    return out;
  } finally {
    handle.close();
  }
}

/** OPFS through a writable stream (also on a page): the stream piped into it. */
async function writeOpfsWritable(bytes) {
  const writable = await (await fileHandle(true)).createWritable();
  await incoming(bytes).pipeTo(writable);
}

async function readOpfsFile(bytes) {
  const file = await (await fileHandle()).getFile();
  const out = new Uint8Array(bytes);
  const at = await drain(file.stream(), out, 0);
  if (at !== bytes) throw new Error(`read ${at} bytes, not ${bytes}`);
  return out;
}

const METHODS = {
  cache: { write: writeCache, read: readCache },
  'opfs-sync': { write: writeOpfsSync, read: readOpfsSync },
  'opfs-writable': { write: writeOpfsWritable, read: readOpfsFile },
};

async function clear() {
  await caches.delete(CACHE);
  const dir = await navigator.storage.getDirectory();
  await dir.removeEntry(FILE).catch(() => {});
}

/** A cheap check that the bytes read back are the ones written: the pattern at a few places. */
function check(out) {
  const source = randomChunk();
  for (const at of [0, CHUNK - 1, out.byteLength - 1, out.byteLength >> 1]) {
    if (out[at] !== source[at % CHUNK]) throw new Error(`byte ${at} read back differs`);
  }
}

self.onmessage = async (e) => {
  const { op, method, bytes, partBytes } = e.data;
  try {
    const t0 = performance.now();
    if (op === 'write') await METHODS[method].write(bytes, partBytes);
    else if (op === 'read') check(await METHODS[method].read(bytes, partBytes));
    else if (op === 'clear') await clear();
    else throw new Error(`unknown op ${op}`);
    const ms = performance.now() - t0;
    const { usage, quota } = await navigator.storage.estimate();
    self.postMessage({ ms, usage, quota });
  } catch (err) {
    self.postMessage({ error: `${op} ${method}: ${err?.message ?? err}` });
  }
};
