// The worker that owns the engine: downloads, loads and generates off the page's thread.
// The page talks to it only through index.js; each message carries the request's id. Many
// generations may be in flight at once: the engine batches them in one drive loop and calls
// back per request, so each text piece and result goes out under its own request's id.
//
// A model goes into the engine as a stream: each file's bytes are pushed chunk by chunk into a
// wasm Loader that uploads every tensor as soon as its bytes are in. No model file is read
// into one ArrayBuffer (browsers cap those at 2 GiB) or held whole in wasm memory.

import init, { Loader } from '../pkg/tandem_web.js';
import { bodySize, download, ensureCached, fileNameOf, openCached, openModelCache } from './cache.js';

let ready = null;
let wasm = null;
let engine = null;

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

function post(msg) {
  self.postMessage(msg);
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

/** Small files (config, tokenizer) before weights: the config says what the weights must be. */
function weightsLast(items, nameOf) {
  const isWeights = (x) => /\.(safetensors|gguf)$/i.test(nameOf(x));
  return [...items.filter((x) => !isWeights(x)), ...items.filter(isWeights)];
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
          throw new Error(`reading ${label} failed: ${e.message}`);
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

/** Sums per-file byte counts into one `(loaded, total)` per stage across the model's files. */
function byteProgress(progress) {
  const files = new Map();
  return (stage, url, loaded, total) => {
    files.set(`${stage} ${url}`, { stage, loaded, total });
    let l = 0, t = 0;
    for (const f of files.values()) if (f.stage === stage) { l += f.loaded; t += f.total; }
    progress({ stage, loaded: l, total: t, url });
  };
}

/** The files at `urls`, through the Cache API unless `useCache` is false or there is none. */
async function loadUrls(loader, urls, useCache, progress) {
  urls = weightsLast(urls, fileNameOf);
  const report = byteProgress(progress);
  const cache = useCache ? await openModelCache() : null;
  if (cache) {
    // Everything into the cache first (misses only), so the download is one stage.
    for (const url of urls) await ensureCached(cache, url, (loaded, total) => report('download', url, loaded, total));
  }
  for (const url of urls) {
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
    await pushStream(loader, fileNameOf(url), size, response.body, url, (n) => report('download', url, n, size ?? n));
  }
}

async function loadFiles(loader, inputs) {
  const files = weightsLast(inputs.map((f, i) => describeInput(f, i, inputs.length)), (f) => f.name);
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
async function loadEngine(source, opts, cache, progress) {
  if (!(source.url || source.urls || source.files)) throw new Error('the source must be { url }, { urls } or { files }');
  // The backend is chosen before the first byte, so tensors go to it as they arrive.
  const loader = await Loader.create(JSON.stringify(opts), (stage, loaded, total) => progress({ stage, loaded, total }));
  try {
    if (source.files) await loadFiles(loader, source.files);
    else await loadUrls(loader, source.urls ?? [source.url], cache, progress);
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

async function load(id, source, options) {
  const progress = (p) => post({ type: 'progress', id, progress: p });
  checkSimd();
  ready ??= init();
  wasm = await ready;
  const opts = { backend: options.backend ?? 'auto', context: options.context, max_seqs: options.maxSeqs, kv_tokens: options.kvTokens, kv_dtype: options.kvDtype, k_dtype: options.kDtype, v_dtype: options.vDtype, allow_f16: options.allowF16,
    max_loras: options.maxLoras, max_lora_rank: options.maxLoraRank, lora_dtype: options.loraDtype };
  const loaded = await loadEngine(source, opts, options.cache !== false, progress);
  if (options.draftModel || options.speculate) {
    try {
      // The draft on the backend the model got, with its progress marked as the draft's.
      const draftOpts = { ...opts, max_loras: undefined, max_lora_rank: undefined, lora_dtype: undefined, backend: JSON.parse(loaded.info).backend.kind === 'cpu' ? 'cpu' : 'webgpu' };
      const draft = options.draftModel ? await loadEngine(options.draftModel, draftOpts, options.cache !== false, (p) => progress({ ...p, draft: true })) : undefined;
      loaded.speculate(draft, options.draftTokens ?? 4);
    } catch (e) {
      loaded.unload();
      throw e;
    }
  }
  engine = loaded;
  const info = JSON.parse(engine.info);
  info.speculation = options.draftModel ? 'draft-model' : options.speculate ? 'ngram' : null;
  info.backend.name = info.backend.kind === 'cpu' ? 'cpu' : await adapterName(info.backend);
  // The engine's WebAssembly memory never shrinks: this is the most it took while loading.
  info.wasm_memory_bytes = wasm.memory.buffer.byteLength;
  return info;
}

self.onmessage = async (event) => {
  const msg = event.data;
  try {
    switch (msg.type) {
      case 'load':
        post({ type: 'loaded', id: msg.id, info: await load(msg.id, msg.source, msg.options ?? {}) });
        break;
      case 'generate': {
        if (!engine) throw new Error('no model is loaded');
        const usage = await engine.generate(msg.id, JSON.stringify(msg.request), (text) => post({ type: 'text', id: msg.id, text }));
        post({ type: 'done', id: msg.id, usage: JSON.parse(usage) });
        break;
      }
      case 'loadAdapter': {
        if (!engine) throw new Error('no model is loaded');
        const { config, weights } = await adapterFiles(msg.source);
        await engine.load_adapter(msg.name, config, weights);
        post({ type: 'done', id: msg.id });
        break;
      }
      case 'unloadAdapter':
        if (!engine) throw new Error('no model is loaded');
        await engine.unload_adapter(msg.name);
        post({ type: 'done', id: msg.id });
        break;
      case 'abort':
        engine?.abort(msg.id);
        break;
      case 'interrupt':
        engine?.interrupt();
        break;
      case 'unload':
        engine?.unload();
        engine = null;
        post({ type: 'unloaded', id: msg.id });
        break;
      default:
        throw new Error(`unknown message type ${msg.type}`);
    }
  } catch (e) {
    post({ type: 'error', id: msg.id, message: describe(e) });
  }
};
