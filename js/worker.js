// The worker that owns the engine: downloads, loads and generates off the page's thread.
// The page talks to it only through index.js; each message carries the request's id. Many
// generations may be in flight at once: the engine batches them in one drive loop and calls
// back per request, so each text piece and result goes out under its own request's id. A
// model's files reach the engine through load.js.
//
// A lost GPU device (a driver reset, or `engine.debug.loseDevice()` in tests) ends every
// request the engine holds with a 'device-lost' error; the worker then loads the model again,
// on a new device, from what it was given: URLs through the Cache API (no download when they
// are cached), Files, Blobs and ArrayBuffers (kept as Blobs) read again. Requests that arrive
// meanwhile wait for it. The page hears of each stage as an event: 'device-lost', 'reloading',
// then 'ready' or 'reload-failed'.

import init from '../pkg/tandem_web.js';
import { adapterFiles, adapterName, checkSimd, keepable, loadEngine } from './load.js';
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

/** A new engine from `source` on `backend`, made the current one; returns its info. */
async function build(source, options, backend, progress) {
  const opts = { backend, context: options.context, context_length: options.contextLength, kv_cache_memory: options.kvCacheMemory, memory_budget: options.memoryBudget, debug_limits: options.debugLimits && { max_storage_buffer_binding_size: options.debugLimits.maxStorageBufferBindingSize, max_buffer_size: options.debugLimits.maxBufferSize },
    max_seqs: options.maxSeqs, kv_tokens: options.kvTokens, kv_dtype: options.kvDtype, k_dtype: options.kDtype, v_dtype: options.vDtype, allow_f16: options.allowF16,
    max_loras: options.maxLoras, max_lora_rank: options.maxLoraRank, lora_dtype: options.loraDtype };
  const useCache = options.cache !== false;
  const storage = { partBytes: options.downloadPartBytes, opfsMinBytes: options.opfsMinBytes };
  const loaded = await loadEngine(source, opts, useCache, storage, progress);
  if (options.draftModel || options.speculate) {
    try {
      // The draft on the backend the model got, with its progress marked as the draft's.
      const draftOpts = { ...opts, max_loras: undefined, max_lora_rank: undefined, lora_dtype: undefined, backend: JSON.parse(loaded.info).backend.kind === 'cpu' ? 'cpu' : 'webgpu' };
      const draft = options.draftModel ? await loadEngine(options.draftModel, draftOpts, useCache, storage, (p) => progress({ ...p, draft: true })) : undefined;
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
