// A model's files into the engine's wasm Loader, and a LoRA adapter's files read for it; runs in
// the worker (worker.js).
//
// A model goes into the engine as a stream: each file's bytes are pushed chunk by chunk into a
// wasm Loader that uploads every tensor as soon as its bytes are in. No model file is read
// into one ArrayBuffer (browsers cap those at 2 GiB) or held whole in wasm memory.

import { Loader, Sha256 } from '../pkg/tandem_web.js';
import { bodySize, download, ensureCached, fileNameOf, openCached, openModelCache, sizeOf } from './cache.js';

/**
 * A module of one function that uses a SIMD instruction (i8x16.popcnt): it validates only where
 * WebAssembly SIMD is supported. The engine is built with SIMD (its CPU fallback's kernels use
 * it), so without it the engine cannot compile at all; this says why, instead of a CompileError.
 */
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

export function checkSimd() {
  if (!WebAssembly.validate(SIMD_PROBE)) {
    throw new Error('this browser lacks WebAssembly SIMD (simd128), which tandem needs: use Chrome or Edge 91+, Firefox 89+ or Safari 16.4+');
  }
}

/** The most bytes pushed into the engine at once (an ArrayBuffer input is cut into these). */
const CHUNK = 8 << 20;

/** A File, Blob or `{ name, data }` input as `{ name, size, chunks() }`, nothing read yet. */
function describeInput(input, i, count) {
  let name = input.name;
  let data = input instanceof Blob ? input : input.data;
  if (data === undefined && (input instanceof ArrayBuffer || ArrayBuffer.isView(input))) data = input;
  if (!name) {
    if (count === 1) name = 'model.gguf';
    else throw new Error(`file ${i} has no name (give { name, data } for ArrayBuffers)`);
  }
  if (data instanceof Blob) return { name, size: data.size, body: () => data.stream() };
  if (data instanceof ArrayBuffer) data = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) data = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else throw new Error(`file '${name}': expected a File, Blob, ArrayBuffer or typed array`);
  return { name, size: data.byteLength, bytes: data };
}

const isWeights = (name) => /\.(safetensors|gguf)$/i.test(name);

/** Small files (config, tokenizer) before weights: the config says what the weights must be. */
function weightsLast(items, nameOf) {
  return [...items.filter((x) => !isWeights(nameOf(x))), ...items.filter((x) => isWeights(nameOf(x)))];
}

/**
 * The engine plans its memory (KV pool, context, backend) from config.json's text and the
 * weight files' sizes before any weights are read; a model that cannot fit is refused here.
 */
function planMemory(loader, config, weights) {
  loader.plan(JSON.stringify({ config, files: weights }));
}

/** The first bytes read of a GGUF file to plan from; grown while its header runs on. */
const GGUF_HEAD = 4 << 20;
/** The most read ahead (the engine refuses a longer header as corrupt). */
const GGUF_HEAD_MAX = 64 << 20;

const isGguf = (name) => /\.gguf$/i.test(name);

/**
 * Plans one GGUF file like a checkpoint, from the config in its header: `head(n)` reads the
 * file's first n bytes as `{ bytes, size }` (size: the whole file's, when it tells), or gives
 * `{ note }` when it cannot (a server that ignores Range), and the plan falls back to the
 * file's size with that note. `file`: `{ name, size }` (size null when unknown).
 */
async function planGguf(loader, file, head) {
  let want = GGUF_HEAD;
  for (;;) {
    const n = file.size === null ? want : Math.min(want, file.size);
    const got = await head(n);
    if (got.note) {
      loader.plan(JSON.stringify({ config: null, files: [{ ...file, size: file.size ?? got.size ?? null }], notes: [got.note] }));
      return;
    }
    file = { ...file, size: file.size ?? got.size ?? null };
    const need = loader.plan_gguf(JSON.stringify({ files: [file] }), got.bytes);
    if (need === undefined) return;
    // A read shorter than asked, or the whole file, is the file's end: its header cannot end past it.
    if (got.bytes.byteLength < n || n === file.size || n >= GGUF_HEAD_MAX) throw new Error(`'${file.name}' ends inside its GGUF header (${got.bytes.byteLength} bytes read, the header needs ${need}): truncated or not a GGUF file`);
    want = Math.min(Math.max(need, want * 2), GGUF_HEAD_MAX);
  }
}

/** The first `n` bytes of `body` (fewer at its end); the rest is left unread. */
async function firstBytes(body, n) {
  const reader = body.getReader();
  const out = new Uint8Array(n);
  let at = 0;
  try {
    while (at < n) {
      const step = await reader.read();
      if (step.done) break;
      const take = Math.min(step.value.byteLength, n - at);
      out.set(step.value.subarray(0, take), at);
      at += take;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return out.subarray(0, at);
}

/**
 * `head(n)` for `planGguf` on `url`: the cache's copy when it holds the file, else a Range
 * request. A server that answers the whole file (200) is not read: the file downloads once,
 * after the plan.
 */
function urlHead(cache, url) {
  return async (n) => {
    const cached = cache ? await openCached(cache, url) : null;
    if (cached) return { bytes: await firstBytes(cached.body, n), size: cached.size };
    let response;
    try {
      response = await fetch(url, { headers: { range: `bytes=0-${n - 1}` } });
    } catch (e) {
      throw new Error(`download of ${url} failed: ${e.message}`);
    }
    if (response.status !== 206) {
      response.body?.cancel().catch(() => {});
      if (!response.ok) throw new Error(`download of ${url} failed: HTTP ${response.status} ${response.statusText}`);
      return { size: bodySize(response), note: `the server of ${fileNameOf(url)} ignored a Range request for its GGUF header, so only the weights' bytes were planned before loading` };
    }
    const total = Number(/\/(\d+)$/.exec(response.headers.get('content-range') ?? '')?.[1]);
    return { bytes: new Uint8Array(await response.arrayBuffer()), size: Number.isSafeInteger(total) ? total : null };
  };
}

/** Pushes a ReadableStream's bytes into the loader as one file. */
async function pushStream(loader, name, size, body, label, onBytes = () => {}) {
  loader.begin_file(name, size ?? undefined);
  if (body) {
    const reader = body.getReader();
    let loaded = 0;
    try {
      for (;;) {
        let step;
        try {
          step = await reader.read();
        } catch (e) {
          // A check of the cache's copy already names the file.
          throw new Error(e.message?.startsWith(label) ? e.message : `reading ${label} failed: ${e.message}`);
        }
        if (step.done) break;
        await pushBytes(loader, step.value);
        loaded += step.value.byteLength;
        onBytes(loaded);
      }
    } catch (e) {
      reader.cancel().catch(() => {});
      throw e;
    }
  }
  loader.end_file();
}

async function pushBytes(loader, bytes) {
  for (let at = 0; at < bytes.byteLength; at += CHUNK) {
    const uploaded = loader.push(bytes.subarray(at, at + CHUNK));
    if (uploaded) await uploaded;
  }
}

/** A download's rate: bytes per second over its last few seconds. */
class Rate {
  constructor() {
    this.samples = []; // [ms, bytes], oldest first, one per 100 ms at most
  }
  add(bytes, now = performance.now()) {
    const last = this.samples.at(-1);
    if (last && now - last[0] < 100 && this.samples.length > 1) last[1] = bytes;
    else this.samples.push([now, bytes]);
    while (this.samples.length > 2 && now - this.samples[1][0] > 3000) this.samples.shift();
  }
  get bytesPerSecond() {
    const [t0, b0] = this.samples[0] ?? [0, 0];
    const [t1, b1] = this.samples.at(-1) ?? [0, 0];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : null;
  }
}

/**
 * Sums per-file byte counts into one `(loaded, total)` per stage across the model's files;
 * downloads also get a rate and the time left (over the bytes fetched now, not those found
 * cached: `fresh`).
 */
function byteProgress(progress) {
  const files = new Map();
  const rate = new Rate();
  return (stage, url, loaded, total, fresh = loaded) => {
    files.set(`${stage} ${url}`, { stage, loaded, total, fresh });
    let l = 0, t = 0, f = 0;
    for (const x of files.values()) if (x.stage === stage) { l += x.loaded; t += x.total; f += x.fresh; }
    const p = { stage, loaded: l, total: t, url, file: fileNameOf(url) };
    if (stage === 'download') {
      rate.add(f);
      const perSecond = rate.bytesPerSecond;
      p.bytesPerSecond = perSecond === null ? null : Math.round(perSecond);
      p.secondsLeft = l >= t ? 0 : perSecond ? (t - l) / perSecond : null;
    }
    progress(p);
  };
}

/** The sha256 (hex) the source gives for `url`, or null. */
function expectedDigest(source, url) {
  if (!source.sha256) return null;
  if (typeof source.sha256 === 'string') return source.sha256;
  return source.sha256[fileNameOf(url)] ?? null;
}

/**
 * The bytes of `body` passed through unchanged, with their count checked against `size` (when
 * known) and their sha256 against `sha256` (when given) at the end: a check that fails errors
 * the stream, so the file never completes.
 */
function checked(body, url, size, sha256) {
  const hash = sha256 ? new Sha256() : null;
  let n = 0;
  return body.pipeThrough(new TransformStream({
    transform(chunk, controller) {
      n += chunk.byteLength;
      hash?.update(chunk);
      controller.enqueue(chunk);
    },
    flush() {
      if (size !== null && n !== size) throw new Error(`${url} is ${n} bytes, not the ${size} its server announced`);
      const actual = hash?.finish();
      if (hash && actual !== sha256) throw new Error(`${url} failed its check: sha256 ${actual}, expected ${sha256}`);
    },
  }));
}

/**
 * The files of `source` (`{ url }` or `{ urls }`, with their digests), through the Cache API
 * unless `useCache` is false or there is none. `storage`: `{ partBytes, opfsMinBytes }` for the
 * cache (tests, tuning);
 * `budgeted`: a memoryBudget is set, so the weights' sizes are asked before they download;
 * `planAhead`: the plan needs the model's config (memoryBudget, kvCacheMemory, or a GPU's
 * binding limit to fit), so a GGUF file's header is read first.
 */
async function loadUrls(loader, source, useCache, storage, progress, budgeted, planAhead) {
  const urls = weightsLast(source.urls ?? [source.url], fileNameOf);
  const report = byteProgress(progress);
  const cache = useCache ? await openModelCache() : null;
  const toCache = (url) => ensureCached(cache, url, {
    sha256: expectedDigest(source, url),
    ...storage,
    createHash: () => new Sha256(),
    onBytes: (loaded, total, fresh) => report('download', url, loaded, total, fresh),
  });
  // The small files first (into the cache, or read here without one), then the memory plan,
  // then the weights: a model that cannot fit is refused before its weights download.
  const small = new Map();
  for (const url of urls.filter((u) => !isWeights(fileNameOf(u)))) {
    if (cache) await toCache(url);
    else {
      small.set(url, new Uint8Array(await (await download(url)).arrayBuffer()));
      report('download', url, small.get(url).byteLength, small.get(url).byteLength);
    }
  }
  const configUrl = urls.find((u) => fileNameOf(u) === 'config.json');
  let config = null;
  if (configUrl) {
    const cached = cache ? await openCached(cache, configUrl) : null;
    config = cached ? await new Response(cached.body).text() : small.has(configUrl) ? new TextDecoder().decode(small.get(configUrl)) : null;
  }
  const weights = urls.filter((u) => isWeights(fileNameOf(u)));
  // Sizes from the network only for a budget: otherwise the plan needs none before loading.
  // A GGUF file's config is in its header: read ahead when the plan needs the config.
  if (planAhead && !config && weights.length === 1 && isGguf(fileNameOf(weights[0]))) {
    const url = weights[0];
    await planGguf(loader, { name: fileNameOf(url), size: await sizeOf(cache, url, false) }, urlHead(cache, url));
  } else {
    const sizes = await Promise.all(weights.map(async (u) => ({ name: fileNameOf(u), size: await sizeOf(cache, u, budgeted) })));
    planMemory(loader, config, sizes);
  }
  // Into the cache first (misses only), so the download is one stage.
  if (cache) for (const url of weights) await toCache(url);
  for (const url of urls) {
    if (small.has(url)) {
      loader.begin_file(fileNameOf(url), small.get(url).byteLength);
      await pushBytes(loader, small.get(url));
      loader.end_file();
      continue;
    }
    const cached = cache ? await openCached(cache, url) : null;
    if (cached) {
      report('cache', url, 0, cached.size ?? 0);
      await pushStream(loader, fileNameOf(url), cached.size, cached.body, url, (n) => report('cache', url, n, cached.size ?? n));
      continue;
    }
    if (cache) {
      progress({ stage: 'cache-skipped', loaded: 0, total: 0, url, warning: `the browser did not keep ${url} in its cache; reading it from the network` });
    }
    const response = await download(url);
    const size = bodySize(response);
    const body = response.body && checked(response.body, url, size, expectedDigest(source, url));
    report('download', url, 0, size ?? 0);
    await pushStream(loader, fileNameOf(url), size, body, url, (n) => report('download', url, n, size ?? n));
  }
}

async function loadFiles(loader, inputs, planAhead) {
  const files = weightsLast(inputs.map((f, i) => describeInput(f, i, inputs.length)), (f) => f.name);
  const configFile = files.find((f) => f.name.replace(/^.*[\\/]/, '') === 'config.json');
  const config = !configFile ? null : configFile.bytes ? new TextDecoder().decode(configFile.bytes) : await new Response(configFile.body()).text();
  const weights = files.filter((f) => isWeights(f.name));
  if (planAhead && !config && weights.length === 1 && isGguf(weights[0].name)) {
    const f = weights[0];
    const head = async (n) => ({ bytes: f.bytes ? f.bytes.subarray(0, n) : await firstBytes(f.body(), n) });
    await planGguf(loader, { name: f.name, size: f.size }, head);
  } else {
    planMemory(loader, config, weights.map((f) => ({ name: f.name, size: f.size })));
  }
  for (const f of files) {
    if (f.body) {
      await pushStream(loader, f.name, f.size, f.body(), `'${f.name}'`);
    } else {
      loader.begin_file(f.name, f.size);
      await pushBytes(loader, f.bytes);
      loader.end_file();
    }
  }
}

export async function adapterName(info) {
  if (info.kind !== 'webgpu' || info.adapter) return info.adapter || 'cpu';
  // Browsers often leave the description empty; vendor and architecture still say what it is.
  try {
    const a = await navigator.gpu.requestAdapter();
    const i = a?.info ?? {};
    return [i.vendor, i.architecture, i.description].filter(Boolean).join(' ') || 'webgpu';
  } catch {
    return 'webgpu';
  }
}

// One model from `source` into a new engine.
export async function loadEngine(source, opts, cache, storage, progress) {
  if (!(source.url || source.urls || source.files)) throw new Error('the source must be { url }, { urls } or { files }');
  // The backend is chosen before the first byte, so tensors go to it as they arrive.
  const loader = await Loader.create(JSON.stringify(opts), (stage, loaded, total) => progress({ stage, loaded, total }));
  try {
    const budgeted = opts.memory_budget != null;
    const planAhead = loader.plans_ahead;
    if (source.files) await loadFiles(loader, source.files, planAhead);
    else await loadUrls(loader, source, cache, storage, progress, budgeted, planAhead);
  } catch (e) {
    loader.free(); // the backend and every tensor uploaded so far
    throw e;
  }
  return loader.finish();
}

/** An input's bytes (File, Blob, `{ name, data }`, ArrayBuffer or typed array). */
async function bytesOf(input, i, count) {
  const f = describeInput(input, i, count);
  return { name: f.name, bytes: f.bytes ?? new Uint8Array(await new Response(f.body()).arrayBuffer()) };
}

/** The bytes at `url` as `{ name, bytes }` (adapters are small: read whole). */
async function fetched(url) {
  return { name: fileNameOf(url), bytes: new Uint8Array(await (await download(url)).arrayBuffer()) };
}

/**
 * A LoRA adapter's files as `{ config, weights }`: PEFT's `adapter_config.json` text and
 * `adapter_model.safetensors` bytes, or a LoRA GGUF's bytes with no config. `source` is a
 * directory URL (PEFT's two files under it), a .gguf URL, `{ urls }` or `{ files }`.
 */
export async function adapterFiles(source) {
  let urls = source.urls;
  if (source.url) {
    const dir = source.url.endsWith('/') ? source.url : `${source.url}/`;
    urls = /\.gguf(\?|#|$)/i.test(source.url) ? [source.url] : [`${dir}adapter_config.json`, `${dir}adapter_model.safetensors`];
  }
  const files = source.files
    ? await Promise.all(source.files.map((f, i) => bytesOf(f, i, source.files.length)))
    : await Promise.all(urls.map(fetched));
  const gguf = files.find((f) => /\.gguf$/i.test(f.name));
  if (gguf) return { weights: gguf.bytes };
  const config = files.find((f) => f.name.endsWith('adapter_config.json'));
  const weights = files.find((f) => /\.safetensors$/i.test(f.name));
  if (!config || !weights) throw new Error('an adapter is PEFT\'s adapter_config.json with its .safetensors, or one .gguf file');
  return { config: new TextDecoder().decode(config.bytes), weights: weights.bytes };
}

/** `source` with any ArrayBuffer or typed array among its files as a Blob. */
export function keepable(source) {
  if (!source.files) return source;
  const blob = (data) => (data instanceof Blob ? data : new Blob([data]));
  const files = source.files.map((f, i) => {
    if (f instanceof Blob) return f;
    if (f instanceof ArrayBuffer || ArrayBuffer.isView(f)) return { name: describeInput(f, i, source.files.length).name, data: blob(f) };
    return { ...f, data: blob(f.data) };
  });
  return { files };
}
