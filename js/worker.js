// The worker that owns the engine: downloads, loads and generates off the page's thread.
// The page talks to it only through index.js; each message carries the request's id. Many
// generations may be in flight at once: the engine batches them in one drive loop and calls
// back per request, so each text piece and result goes out under its own request's id.
//
// A model goes into the engine as a stream: each file's bytes are pushed chunk by chunk into a
// wasm Loader that uploads every tensor as soon as its bytes are in. No model file is read
// into one ArrayBuffer (browsers cap those at 2 GiB) or held whole in wasm memory.
//
// A lost GPU device (a driver reset, or `engine.debug.loseDevice()` in tests) ends every
// request the engine holds with a 'device-lost' error; the worker then loads the model again,
// on a new device, from what it was given: URLs through the Cache API (no download when they
// are cached), Files, Blobs and ArrayBuffers (kept as Blobs) read again. Requests that arrive
// meanwhile wait for it. The page hears of each stage as an event: 'device-lost', 'reloading',
// then 'ready' or 'reload-failed'.

import init, { Loader, Sha256 } from '../pkg/tandem_web.js';
import { bodySize, download, ensureCached, fileNameOf, openCached, openModelCache, sizeOf } from './cache.js';
import { Admission, Client, Steps } from './clients.js';

let ready = null;
let wasm = null;
let engine = null;
/** What the engine was made from, to make it again: `{ source, options, adapters }`. */
let recipe = null;
/** While the engine is made again after a lost device: settles when that has ended. */
let reloading = null;
/** Why the engine could not be made again; every later request fails with it. */
let reloadError = null;
/** Requests waiting for the reload, by engine id: true once aborted meanwhile. */
const waiting = new Map();
let unloaded = false;

/** A SharedWorker (one engine for every tab of an origin), or a dedicated worker. */
const isShared = typeof SharedWorkerGlobalScope !== 'undefined' && self instanceof SharedWorkerGlobalScope;
/** Every page connected: the one page of a dedicated worker, each tab's port of a shared one. */
const clients = new Set();
let clientCount = 0;
/** The engine's ids, unique over every client's requests. */
let nextEngineId = 1;
const admission = new Admission();
const steps = new Steps();
/** A shared worker's load: `{ key, promise, waiters }` (the tabs waiting for it, who get its
 * progress), the same for every tab that asks for that key. */
let loading = null;
/** The current engine's info (a reload after a lost device makes it anew). */
let engineInfo = null;
/** How many times this worker loaded a model (reloads after a lost device not counted). */
let loads = 0;
/** The shared engine's unload, due once the last tab has left. */
let graceTimer = null;

/**
 * A module of one function that uses a SIMD instruction (i8x16.popcnt): it validates only where
 * WebAssembly SIMD is supported. The engine is built with SIMD (its CPU fallback's kernels use
 * it), so without it the engine cannot compile at all; this says why, instead of a CompileError.
 */
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

function checkSimd() {
  if (!WebAssembly.validate(SIMD_PROBE)) {
    throw new Error('this browser lacks WebAssembly SIMD (simd128), which tandem needs: use Chrome or Edge 91+, Firefox 89+ or Safari 16.4+');
  }
}

/** The most bytes pushed into the engine at once (an ArrayBuffer input is cut into these). */
const CHUNK = 8 << 20;

/** `msg` to every page (about the engine itself: events, a reload's progress). */
function broadcast(msg) {
  for (const client of clients) client.post(msg);
}

function describe(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    // A trap (an allocation that failed, or a bug) leaves the module unusable.
    return `the engine crashed (${e.message}); it most likely ran out of memory. Create the engine again, with a smaller model or context`;
  }
  if (e instanceof RangeError && /memory/i.test(e.message)) {
    return `out of memory: ${e.message}`;
  }
  return (e && e.message) || String(e);
}

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
 * unless `useCache` is false or there is none. `partBytes`: the cache's part size (tests);
 * `budgeted`: a memoryBudget is set, so the weights' sizes are asked before they download.
 */
async function loadUrls(loader, source, useCache, partBytes, progress, budgeted) {
  const urls = weightsLast(source.urls ?? [source.url], fileNameOf);
  const report = byteProgress(progress);
  const cache = useCache ? await openModelCache() : null;
  const toCache = (url) => ensureCached(cache, url, {
    sha256: expectedDigest(source, url),
    partBytes,
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
  const sizes = await Promise.all(weights.map(async (u) => ({ name: fileNameOf(u), size: await sizeOf(cache, u, budgeted) })));
  planMemory(loader, config, sizes);
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

async function loadFiles(loader, inputs) {
  const files = weightsLast(inputs.map((f, i) => describeInput(f, i, inputs.length)), (f) => f.name);
  const configFile = files.find((f) => f.name.replace(/^.*[\\/]/, '') === 'config.json');
  const config = !configFile ? null : configFile.bytes ? new TextDecoder().decode(configFile.bytes) : await new Response(configFile.body()).text();
  planMemory(loader, config, files.filter((f) => isWeights(f.name)).map((f) => ({ name: f.name, size: f.size })));
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

async function adapterName(info) {
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
async function loadEngine(source, opts, cache, partBytes, progress) {
  if (!(source.url || source.urls || source.files)) throw new Error('the source must be { url }, { urls } or { files }');
  // The backend is chosen before the first byte, so tensors go to it as they arrive.
  const loader = await Loader.create(JSON.stringify(opts), (stage, loaded, total) => progress({ stage, loaded, total }));
  try {
    if (source.files) await loadFiles(loader, source.files);
    else await loadUrls(loader, source, cache, partBytes, progress, opts.memory_budget !== undefined);
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
async function adapterFiles(source) {
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

async function load(source, options, progress) {
  checkSimd();
  ready ??= init();
  wasm = await ready;
  unloaded = false;
  recipe = { source, options, adapters: new Map() };
  loads++;
  const info = await build(source, options, options.backend ?? 'auto', progress);
  // Only a GPU device can be lost; bytes given as ArrayBuffers are kept for that as Blobs,
  // which the browser may hold on disk, rather than in this worker's memory.
  recipe = info.backend.kind === 'cpu' ? null : { ...recipe, source: keepable(source), options: { ...options, draftModel: options.draftModel && keepable(options.draftModel) } };
  return info;
}

/** `source` with any ArrayBuffer or typed array among its files as a Blob. */
function keepable(source) {
  if (!source.files) return source;
  const blob = (data) => (data instanceof Blob ? data : new Blob([data]));
  const files = source.files.map((f, i) => {
    if (f instanceof Blob) return f;
    if (f instanceof ArrayBuffer || ArrayBuffer.isView(f)) return { name: describeInput(f, i, source.files.length).name, data: blob(f) };
    return { ...f, data: blob(f.data) };
  });
  return { files };
}

/** A new engine from `source` on `backend`, made the current one; returns its info. */
async function build(source, options, backend, progress) {
  const opts = { backend, context: options.context, context_length: options.contextLength, kv_cache_memory: options.kvCacheMemory, memory_budget: options.memoryBudget, debug_limits: options.debugLimits && { max_storage_buffer_binding_size: options.debugLimits.maxStorageBufferBindingSize, max_buffer_size: options.debugLimits.maxBufferSize },
    max_seqs: options.maxSeqs, kv_tokens: options.kvTokens, kv_dtype: options.kvDtype, k_dtype: options.kDtype, v_dtype: options.vDtype, allow_f16: options.allowF16,
    max_loras: options.maxLoras, max_lora_rank: options.maxLoraRank, lora_dtype: options.loraDtype };
  const useCache = options.cache !== false;
  const loaded = await loadEngine(source, opts, useCache, options.downloadPartBytes, progress);
  if (options.draftModel || options.speculate) {
    try {
      // The draft on the backend the model got, with its progress marked as the draft's.
      const draftOpts = { ...opts, max_loras: undefined, max_lora_rank: undefined, lora_dtype: undefined, backend: JSON.parse(loaded.info).backend.kind === 'cpu' ? 'cpu' : 'webgpu' };
      const draft = options.draftModel ? await loadEngine(options.draftModel, draftOpts, useCache, options.downloadPartBytes, (p) => progress({ ...p, draft: true })) : undefined;
      loaded.speculate(draft, options.draftTokens ?? 4);
    } catch (e) {
      loaded.unload();
      throw e;
    }
  }
  watch(loaded);
  const info = JSON.parse(engine.info);
  info.speculation = options.draftModel ? 'draft-model' : options.speculate ? 'ngram' : null;
  info.backend.name = info.backend.kind === 'cpu' ? 'cpu' : await adapterName(info.backend);
  // The engine's WebAssembly memory never shrinks: this is the most it took while loading.
  info.wasm_memory_bytes = wasm.memory.buffer.byteLength;
  engineInfo = info;
  return info;
}

/** Makes `e` the engine, and has its device's loss reload the model. */
function watch(e) {
  engine = e;
  e.device_lost().then((reason) => {
    if (engine === e) deviceLost(reason);
  });
}

function emit(type, detail = {}) {
  broadcast({ type: 'event', event: { type, ...detail } });
}

/** The engine's device is gone: its requests end with the loss (the engine does that), and the
 * model is loaded again. */
function deviceLost(reason) {
  const lost = engine;
  engine = null;
  emit('device-lost', { reason });
  reloading = reload(reason).finally(() => {
    reloading = null;
    // Its drive loop has ended every request; nothing more runs on it.
    lost.free();
  });
}

async function reload(reason) {
  emit('reloading', { reason });
  const { source, options, adapters } = recipe;
  try {
    // 'auto': WebGPU on a new device, or the CPU when there is none to be had.
    const info = await build(source, options, 'auto', (p) => broadcast({ type: 'progress', progress: { ...p, reload: true } }));
    if (info.backend.kind === 'cpu') {
      info.backend.fallback_reason = `WebGPU could not be set up again after the GPU device was lost (${info.backend.fallback_reason ?? 'unknown reason'}); running on the CPU`;
    }
    const adapterErrors = [];
    for (const [name, adapterSource] of adapters) {
      try {
        const { config, weights } = await adapterFiles(adapterSource);
        if (!engine) break;
        await engine.load_adapter(name, config, weights);
      } catch (e) {
        adapters.delete(name);
        adapterErrors.push(`adapter '${name}': ${describe(e)}`);
      }
    }
    if (unloaded) {
      engine?.unload();
      engine = null;
      return;
    }
    emit('ready', { info, backend: info.backend.name, fallbackReason: info.backend.fallback_reason ?? null, adapterErrors });
  } catch (e) {
    engine?.unload();
    engine = null;
    reloadError = `the GPU device was lost (reason: ${reason}) and the model could not be loaded again: ${describe(e)}`;
    emit('reload-failed', { reason, message: reloadError });
  }
}

/** The engine for request `id`, once any reload has ended; `aborted` when it was aborted while
 * it waited. */
async function engineFor(id) {
  let aborted = false;
  if (reloading) {
    waiting.set(id, false);
    try {
      await reloading;
    } finally {
      aborted = waiting.get(id);
      waiting.delete(id);
    }
  }
  if (!engine) throw new Error(reloadError ?? (unloaded ? 'the engine was unloaded' : 'no model is loaded'));
  return { engine, aborted };
}

/** An error for the page: a lost device's says that the engine is reloading. */
function errorMessage(id, e) {
  if (e?.name === 'DeviceLostError') return { type: 'error', id, code: 'device-lost', message: `${e.message}; the engine is reloading` };
  return { type: 'error', id, message: describe(e) };
}

/**
 * A shared worker's model for `client`: the one loaded (or loading) for the same `key` (source
 * and options) is attached to, with no download and no load of its own.
 */
async function attach(client, msg) {
  const options = msg.options ?? {};
  if (options.backend !== 'cpu' && msg.pageHasGpu && !navigator.gpu) {
    throw Object.assign(new Error('WebGPU is not available inside a SharedWorker in this browser'), { code: 'no-webgpu' });
  }
  if (loading && loading.key !== msg.key) {
    throw new Error('this shared worker holds another model (a SharedWorker is named by its source and options; name it differently)');
  }
  if (!loading) {
    const waiters = new Set();
    const promise = load(msg.source, options, (p) => {
      for (const w of waiters) w.post({ type: 'progress', id: w.loadId, progress: p });
    });
    loading = { key: msg.key, promise, waiters };
    promise.catch(() => {
      if (loading?.promise === promise) loading = null;
    });
  }
  clearTimeout(graceTimer);
  graceTimer = null;
  client.loadId = msg.id;
  loading.waiters.add(client);
  try {
    await loading.promise;
    admission.limit = engineInfo.model?.max_seqs ?? options.maxSeqs ?? 4;
    return engineInfo;
  } finally {
    loading?.waiters.delete(client);
  }
}

/** `client` has gone (its tab closed or navigated away, or it unloaded): its requests end and
 * their KV blocks are freed; the last one out unloads a shared engine after a grace period. */
function leave(client) {
  if (client.gone) return;
  client.gone = true;
  clients.delete(client);
  for (const r of client.requests.values()) {
    if (!admission.remove(r)) abort(r);
  }
  if (!isShared || clients.size) return;
  clearTimeout(graceTimer);
  graceTimer = setTimeout(() => {
    graceTimer = null;
    if (clients.size) return;
    engine?.unload();
    engine = null;
    loading = null;
    recipe = null;
    unloaded = true;
  }, client.graceMs ?? 5000);
}

/** Asks generation `r` to stop: it then ends through the engine with finish_reason
 * "interrupted" (one still waiting for admission goes in just for that). */
function abort(r) {
  r.aborted = true;
  if (admission.remove(r)) return admission.force(r);
  if (waiting.has(r.engineId)) waiting.set(r.engineId, true);
  else engine?.abort(r.engineId);
}

/** Runs generation `r` in the engine, its text and end to its client. */
async function run(r, request) {
  const { client, id, engineId } = r;
  try {
    const { engine: e, aborted } = await engineFor(engineId);
    const usage = e.generate(engineId, JSON.stringify(request), (text) => {
      steps.saw(client);
      client.post({ type: 'text', id, text });
    });
    r.inEngine = true;
    if (aborted || r.aborted) e.abort(engineId);
    client.post({ type: 'done', id, usage: JSON.parse(await usage) });
  } catch (e) {
    client.post(errorMessage(id, e));
  } finally {
    r.inEngine = false;
    client.requests.delete(id);
    admission.finished();
  }
}

/** What tests and dashboards read: loads, clients and how their requests were batched. */
function stats(client) {
  const perClient = [...clients].map((c) => ({
    client: c.number,
    running: [...c.requests.values()].filter((r) => r.inEngine).length,
    queued: admission.waiting(c),
  }));
  return {
    shared: isShared,
    client: client.number,
    clients: clients.size,
    loads,
    loaded: !!engine,
    inEngine: admission.running,
    admissionLimit: admission.limit,
    perClient,
    steps: steps.steps,
    sharedSteps: steps.sharedSteps,
    mostClientsInStep: steps.mostClients,
    mostRequestsInStep: steps.mostRequests,
  };
}

async function handle(client, msg) {
  try {
    switch (msg.type) {
      case 'load': {
        if (!isShared) {
          client.post({ type: 'loaded', id: msg.id, info: await load(msg.source, msg.options ?? {}, (p) => client.post({ type: 'progress', id: msg.id, progress: p })) });
          break;
        }
        // The tab holds this lock for its lifetime: it is granted here once the tab is gone.
        if (msg.tabLock) navigator.locks.request(msg.tabLock, () => leave(client));
        client.graceMs = msg.graceMs;
        const info = await attach(client, msg);
        client.post({ type: 'loaded', id: msg.id, info });
        break;
      }
      case 'generate': {
        if (client.requests.has(msg.id)) throw new Error(`request id ${msg.id} is already in flight`);
        const r = { client, id: msg.id, engineId: nextEngineId++, aborted: false, inEngine: false };
        r.start = () => run(r, msg.request);
        client.requests.set(msg.id, r);
        admission.submit(r);
        break;
      }
      case 'loadAdapter': {
        const { engine: e } = await engineFor(nextEngineId++);
        const { config, weights } = await adapterFiles(msg.source);
        await e.load_adapter(msg.name, config, weights);
        // Loaded again should the model be.
        recipe?.adapters.set(msg.name, keepable(msg.source));
        client.post({ type: 'done', id: msg.id });
        break;
      }
      case 'unloadAdapter': {
        const { engine: e } = await engineFor(nextEngineId++);
        await e.unload_adapter(msg.name);
        recipe?.adapters.delete(msg.name);
        client.post({ type: 'done', id: msg.id });
        break;
      }
      case 'abort': {
        const r = client.requests.get(msg.id);
        if (r) abort(r);
        break;
      }
      case 'interrupt':
        if (isShared) {
          for (const r of client.requests.values()) abort(r);
          break;
        }
        for (const id of waiting.keys()) waiting.set(id, true);
        engine?.interrupt();
        break;
      case 'unload':
        if (isShared) {
          // Only this tab leaves; the engine stays for the others.
          client.post({ type: 'unloaded', id: msg.id });
          leave(client);
          break;
        }
        unloaded = true;
        engine?.unload();
        engine = null;
        client.post({ type: 'unloaded', id: msg.id });
        break;
      case 'workerStats':
        client.post({ type: 'done', id: msg.id, value: stats(client) });
        break;
      case 'stats': {
        const { engine: e } = await engineFor(nextEngineId++);
        client.post({ type: 'done', id: msg.id, value: JSON.parse(e.stats()) });
        break;
      }
      case 'debugLoseDevice':
        // TESTING ONLY (engine.debug.loseDevice()): destroys the GPU device under the engine.
        if (!engine) throw new Error('no engine is running (it may be reloading)');
        engine.debug_lose_device();
        client.post({ type: 'done', id: msg.id });
        break;
      default:
        throw new Error(`unknown message type ${msg.type}`);
    }
  } catch (e) {
    const reply = errorMessage(msg.id, e);
    if (e?.code === 'no-webgpu') reply.code = e.code;
    client.post(reply);
  }
}

if (isShared) {
  self.onconnect = (event) => {
    const port = event.ports[0];
    const client = new Client(port, ++clientCount);
    clients.add(client);
    port.onmessage = (e) => handle(client, e.data);
  };
} else {
  const client = new Client(self, ++clientCount);
  clients.add(client);
  self.onmessage = (e) => handle(client, e.data);
}
