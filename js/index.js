// tandem's JavaScript API: an engine in a Web Worker, driven through an OpenAI-shaped
// chat.completions API and a lower-level text generator.

export { listCachedModels, deleteCachedModel } from './cache.js';

let nextId = 1;

class TandemError extends Error {
  /** `code`: 'device-lost' when the GPU device was lost under the request; else undefined. */
  constructor(message, code) {
    super(message);
    this.name = 'TandemError';
    if (code) this.code = code;
  }
}

/** A queue that the worker's messages fill and an async iterator drains. */
class PieceQueue {
  constructor() {
    this.items = [];
    this.waiting = null;
    this.ended = false;
    this.error = null;
  }
  push(item) {
    if (this.waiting) {
      this.waiting.resolve({ value: item, done: false });
      this.waiting = null;
    } else {
      this.items.push(item);
    }
  }
  end(error = null) {
    this.ended = true;
    this.error = error;
    if (this.waiting) {
      if (error) this.waiting.reject(error);
      else this.waiting.resolve({ value: undefined, done: true });
      this.waiting = null;
    }
  }
  next() {
    if (this.items.length) return Promise.resolve({ value: this.items.shift(), done: false });
    if (this.ended) return this.error ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }
}

/**
 * The text of one generation as an async iterator of pieces; `usage` resolves when it ends.
 * Leaving a `for await` loop early interrupts this generation (only this one).
 */
class TextStream {
  constructor(queue, usage, abort) {
    this.queue = queue;
    this.usage = usage;
    this.abort = abort;
    // Awaiting `usage` is optional; an error is already reported through the iterator.
    usage.catch(() => {});
  }
  [Symbol.asyncIterator]() {
    return this;
  }
  next() {
    return this.queue.next();
  }
  async return() {
    if (!this.queue.ended) this.abort();
    await this.usage.catch(() => {});
    return { value: undefined, done: true };
  }
}

function randomSeed() {
  return Math.floor(Math.random() * 2 ** 32);
}

/** A prompt for the worker: text as a string, token ids as a plain array (checked here). */
function toPrompt(prompt) {
  if (typeof prompt === 'string') return prompt;
  if (Array.isArray(prompt) || ArrayBuffer.isView(prompt)) {
    const ids = Array.from(prompt);
    const bad = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id > 0xffffffff);
    if (bad >= 0) throw new TandemError(`prompt token ids must be non-negative integers; item ${bad} is ${ids[bad]}`);
    return ids;
  }
  return String(prompt);
}

/** A chat message as the engine reads it: text content, and a turn's tool calls or answer. */
function toMessage(m) {
  const out = { role: m.role, content: String(m.content ?? '') };
  if (m.tool_calls) out.tool_calls = m.tool_calls;
  if (m.tool_call_id) out.tool_call_id = m.tool_call_id;
  if (m.name) out.name = m.name;
  return out;
}

function toRequest(base, options) {
  const o = options ?? {};
  const request = { ...base };
  const keys = ['max_tokens', 'temperature', 'top_p', 'adapter', 'model', 'top_k', 'min_p', 'repetition_penalty', 'seed', 'stop', 'ignore_eos',
    // Structured output and tools (OpenAI's fields, and tandem's regex and grammar).
    'response_format', 'regex', 'grammar', 'grammar_syntax', 'tools', 'tool_choice', 'parallel_tool_calls'];
  for (const key of keys) {
    if (o[key] !== undefined && o[key] !== null) request[key] = o[key];
  }
  // OpenAI samples at temperature 1 unless told otherwise; a fresh seed per call unless given.
  request.temperature ??= 1;
  if (request.temperature > 0) request.seed ??= randomSeed();
  return request;
}

/**
 * A loaded model. Also an EventTarget: when its GPU device is lost it dispatches
 * 'device-lost', 'reloading', then 'ready' (or 'reload-failed'), each a CustomEvent whose
 * `detail` says more (see index.d.ts).
 */
class Engine extends EventTarget {
  constructor(worker, info, onProgress, close) {
    super();
    /** The worker, or the shared worker's port. */
    this.worker = worker;
    this.close = close;
    /** Whether this engine is shared with the origin's other tabs (a SharedWorker's). */
    this.shared = false;
    this.info = info;
    /** The adapter's name, or "cpu". */
    this.backend = info.backend.name;
    /** Why the CPU was chosen under backend "auto"; null otherwise. */
    this.fallbackReason = info.backend.fallback_reason ?? null;
    // Every request in flight, by id: the worker batches them all in one engine.
    this.pending = new Map();
    this.unloaded = false;
    this.onProgress = onProgress;
    // Messages without an id are about the engine itself (a lost device and its reload).
    worker.onmessage = (e) => (e.data.id === undefined ? this.fromWorker(e.data) : this.pending.get(e.data.id)?.(e.data));
    worker.onerror = (e) => this.failAll(new TandemError(`the engine's worker failed: ${e.message ?? 'unknown error'}`));
    const self = this;
    /** Hooks for tests; not for applications. */
    this.debug = {
      /** TESTING ONLY: destroys the engine's GPU device (`device.destroy()`), as a driver reset
       * would take it away; the engine then reloads as it would after a real loss. */
      loseDevice: () => self.call({ type: 'debugLoseDevice' }),
    };
    this.chat = {
      completions: {
        create(params, options) {
          return self.createCompletion(params, options);
        },
      },
    };
  }

  fromWorker(msg) {
    if (msg.type === 'progress') {
      if (msg.progress.warning) console.warn(`tandem: ${msg.progress.warning}`);
      this.onProgress?.(msg.progress);
      return;
    }
    if (msg.type !== 'event') return;
    const detail = msg.event;
    if (detail.type === 'ready') {
      this.info = detail.info;
      this.backend = detail.backend;
      this.fallbackReason = detail.fallbackReason;
      if (this.fallbackReason) console.warn(`tandem: ${this.fallbackReason}`);
    }
    this.dispatchEvent(new CustomEvent(detail.type, { detail }));
  }

  failAll(error) {
    for (const handler of this.pending.values()) handler({ type: 'error', message: error.message });
  }

  /**
   * Streams the text generated after `prompt`: plain text (no chat template), or token ids
   * (an array of integers), fed exactly as given with no BOS added.
   */
  generate(prompt, options) {
    return this.run(toRequest({ prompt: toPrompt(prompt) }, options), options?.signal);
  }

  /**
   * Sends `request` to the worker at once: it joins the requests already running there.
   * `signal` (an AbortSignal) interrupts this request alone.
   */
  run(request, signal) {
    if (this.unloaded) throw new TandemError('the engine was unloaded');
    const queue = new PieceQueue();
    const id = nextId++;
    const abort = () => {
      if (this.pending.has(id)) this.worker.postMessage({ type: 'abort', id });
    };
    const usage = new Promise((resolve, reject) => {
      this.pending.set(id, (msg) => {
        if (msg.type === 'text') return queue.push(msg.text);
        this.pending.delete(id);
        signal?.removeEventListener('abort', abort);
        if (msg.type === 'done') {
          queue.end();
          resolve(msg.usage);
        } else {
          const error = new TandemError(msg.message, msg.code);
          queue.end(error);
          reject(error);
        }
      });
    });
    this.worker.postMessage({ type: 'generate', id, request });
    if (signal?.aborted) abort();
    else signal?.addEventListener('abort', abort, { once: true });
    return new TextStream(queue, usage, abort);
  }

  async createCompletion(params, options) {
    const { messages, stream } = params ?? {};
    if (!Array.isArray(messages) || messages.length === 0) throw new TandemError('messages must be a non-empty array');
    // `model` naming a loaded adapter runs through it (as servers serve adapters).
    const request = toRequest({ messages: messages.map(toMessage) }, params);
    const text = this.run(request, options?.signal);
    const id = `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    const created = Math.floor(Date.now() / 1000);
    const model = params.model ?? 'tandem';
    const usageOf = (u) => ({ prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total_tokens, ...u });
    if (!stream) {
      let content = '';
      for await (const piece of text) content += piece;
      const usage = await text.usage;
      const message = { role: 'assistant', content };
      if (usage.tool_calls?.length) {
        message.tool_calls = usage.tool_calls;
        if (!content) message.content = null;
      }
      return {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [{ index: 0, message, finish_reason: usage.finish_reason }],
        usage: usageOf(usage),
      };
    }
    const chunk = (delta, finish_reason = null) => ({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason }] });
    async function* chunks() {
      let first = true;
      for await (const piece of text) {
        yield chunk(first ? { role: 'assistant', content: piece } : { content: piece });
        first = false;
      }
      const usage = await text.usage;
      // Calls are recognized once complete: they come whole, before the finish.
      if (usage.tool_calls?.length) {
        const tool_calls = usage.tool_calls.map((c, index) => ({ index, ...c }));
        yield chunk(first ? { role: 'assistant', tool_calls } : { tool_calls });
      }
      yield { ...chunk({}, usage.finish_reason), usage: usageOf(usage) };
    }
    const iterator = chunks();
    // Breaking out of the loop stops the generation.
    const stop = iterator.return.bind(iterator);
    iterator.return = async (v) => {
      await text.return();
      return stop(v);
    };
    return iterator;
  }

  /**
   * Loads a LoRA adapter under `name` (the engine needs `maxLoras`): `source` is a PEFT
   * directory's URL (its adapter_config.json and adapter_model.safetensors), a LoRA GGUF's URL
   * (llama.cpp's convert_lora_to_gguf.py), or `{ files }` (those files as File, Blob with a
   * name, or `{ name, data }`) or `{ urls }`. Requests then run through it with `adapter: name`
   * (or chat.completions' `model: name`); requests in flight go on meanwhile. Up to `maxLoras`
   * adapters sit on the backend at once; a request for another waits for a slot.
   */
  async loadAdapter(name, source) {
    if (typeof name !== 'string' || !name) throw new TandemError('an adapter needs a name (a non-empty string)');
    return this.call({ type: 'loadAdapter', name, source: normalizeSource(source) });
  }

  /**
   * The model's memory now, in bytes: `{ weights_bytes, kv_bytes_total, kv_bytes_used,
   * kv_bytes_free, kv_block_bytes, kv_blocks_total, kv_blocks_used, kv_blocks_cached,
   * scratch_bytes }`. KV used counts the blocks requests hold (idle cached prefixes are free).
   */
  stats() {
    return this.call({ type: 'stats' });
  }

  /** Unloads adapter `name`: new requests for it fail; those running finish first. */
  unloadAdapter(name) {
    return this.call({ type: 'unloadAdapter', name });
  }

  /** Sends `msg` to the worker and resolves when it answers done (rejects on its error). */
  call(msg) {
    if (this.unloaded) return Promise.reject(new TandemError('the engine was unloaded'));
    const id = nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, (reply) => {
        this.pending.delete(id);
        if (reply.type === 'done') resolve(reply.value);
        else reject(new TandemError(reply.message, reply.code));
      });
      this.worker.postMessage({ ...msg, id });
    });
  }

  /**
   * The worker's counters: `{ shared, client, clients, loads, loaded, inEngine, perClient:
   * [{ client, running, queued }], steps, sharedSteps, mostClientsInStep, mostRequestsInStep }`
   * (see index.d.ts).
   */
  workerStats() {
    return this.call({ type: 'workerStats' });
  }

  /** Stops every generation in flight after its current token (a shared engine: this tab's). */
  interrupt() {
    this.worker.postMessage({ type: 'interrupt' });
  }

  /** Frees the model and ends the worker; a shared engine's tab leaves it (the last one out
   * frees it after `sharedGraceMs`). */
  async unload() {
    if (this.unloaded) return;
    this.unloaded = true;
    this.interrupt();
    const id = nextId++;
    await new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.worker.postMessage({ type: 'unload', id });
    });
    this.failAll(new TandemError('the engine was unloaded'));
    this.close();
  }
}

function normalizeSource(source) {
  if (typeof source === 'string') return { url: new URL(source, location.href).href };
  if (!source || typeof source !== 'object') throw new TandemError('source must be { url }, { urls } or { files }');
  if (source.url) return { url: new URL(source.url, location.href).href, ...digests(source, [source.url]) };
  if (source.urls) return { urls: source.urls.map((u) => new URL(u, location.href).href), ...digests(source, source.urls) };
  if (source.files) return { files: Array.from(source.files) };
  throw new TandemError('source must be { url }, { urls } or { files }');
}

const SHA256 = /^[0-9a-f]{64}$/;

/**
 * A URL source's `sha256` checked and lower-cased: one hex digest (with `url`), or digests by
 * file name (a URL's last segment: `{ 'model.safetensors': '…' }`).
 */
function digests(source, urls) {
  const given = source.sha256;
  if (given === undefined || given === null) return {};
  const bad = (what, value) => new TandemError(`sha256 ${what} must be 64 hex digits, not ${JSON.stringify(value)}`);
  if (typeof given === 'string') {
    if (!source.url) throw new TandemError('sha256 as one digest goes with { url }; with { urls } give { [file name]: digest }');
    if (!SHA256.test(given.toLowerCase())) throw bad('', given);
    return { sha256: given.toLowerCase() };
  }
  if (typeof given !== 'object') throw new TandemError('sha256 must be a hex digest or { [file name]: digest }');
  const names = urls.map((u) => {
    const path = new URL(u, location.href).pathname;
    return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1));
  });
  const out = {};
  for (const [name, digest] of Object.entries(given)) {
    if (!names.includes(name)) throw new TandemError(`sha256 names '${name}', which is none of the source's files (${names.join(', ')})`);
    if (typeof digest !== 'string' || !SHA256.test(digest.toLowerCase())) throw bad(`of '${name}'`, digest);
    out[name] = digest.toLowerCase();
  }
  return { sha256: out };
}

/**
 * Loads a model in a new Web Worker. Every file is streamed into the engine (never read into
 * one ArrayBuffer), and each tensor goes to the backend as soon as its bytes have arrived.
 * @param source `{ url }` (a .gguf), `{ urls }` (an HF checkpoint's files), or `{ files }`
 *   (File, Blob with a name, or `{ name, data }`). A URL source may carry `sha256`: the
 *   file's hex digest with `{ url }`, digests by file name with `{ urls }`; a file that does
 *   not match is refused (and removed from the cache).
 * A lost GPU device is survived: see the Engine's events ('device-lost', 'reloading', 'ready').
 * @param options `{ onProgress({ stage, file, loaded, total, bytesPerSecond, secondsLeft })
 *   (also for a reload after a lost GPU device, with `reload: true`),
 *   backend: 'auto' | 'webgpu' | 'cpu', contextLength (or context), maxSeqs, kvTokens or
 *   kvCacheMemory (bytes, or '64MiB'), memoryBudget (bytes or a size string: the KV pool is
 *   shrunk to fit, or the model refused before its weights download; `info.memory` says
 *   what was planned), kvDtype ('f32', 'f16',
 *   'q8_0' or 'q4_0'; kDtype / vDtype for keys and values each), cache (default true:
 *   downloads are kept in the Cache API, and resume where a cut-off one stopped),
 *   downloadPartBytes (the cache's part size; tests, tuning), opfsMinBytes (files this large
 *   or larger go to the Origin Private File System instead, from a dedicated worker; default
 *   never),
 *   draftModel (a source like `source`: speculative decoding with that smaller model of the
 *   same tokenizer), speculate: 'ngram' (speculation without a draft model), draftTokens
 *   (default 4), maxLoras (LoRA adapters held at once; see `loadAdapter`), maxLoraRank
 *   (default 16), loraDtype ('f32' or 'f16'), workerUrl, shared (true: one engine in a
 *   SharedWorker for every tab of the origin that asks for this source with these options),
 *   sharedGraceMs (default 5000: how long a shared engine outlives its last tab's unload) }`.
 */
export async function createEngine(source, options = {}) {
  const src = normalizeSource(source);
  const { backend, context, contextLength, kvCacheMemory, memoryBudget, debugLimits, maxSeqs, kvTokens, kvDtype, kDtype, vDtype, allowF16, cache, downloadPartBytes, opfsMinBytes, draftTokens, maxLoras, maxLoraRank, loraDtype } = options;
  if (downloadPartBytes !== undefined && !(Number.isSafeInteger(downloadPartBytes) && downloadPartBytes > 0)) {
    throw new TandemError(`downloadPartBytes must be a positive whole number, not ${downloadPartBytes}`);
  }
  if (opfsMinBytes !== undefined && !(typeof opfsMinBytes === 'number' && opfsMinBytes >= 0)) {
    throw new TandemError(`opfsMinBytes must be a number of bytes >= 0 (Infinity: never), not ${opfsMinBytes}`);
  }
  const draftModel = options.draftModel === undefined ? undefined : normalizeSource(options.draftModel);
  const speculate = options.speculate === undefined ? undefined : checkSpeculate(options.speculate);
  const loadOptions = { backend, context, contextLength, kvCacheMemory, memoryBudget, debugLimits, maxSeqs, kvTokens, kvDtype, kDtype, vDtype, allowF16, cache, downloadPartBytes, opfsMinBytes, draftModel, draftTokens, speculate, maxLoras, maxLoraRank, loraDtype };
  let sharedFallback = null;
  if (options.shared) {
    sharedFallback = sharedUnavailable(src, draftModel);
    if (!sharedFallback) {
      try {
        return await createShared(src, loadOptions, options);
      } catch (e) {
        if (e.code !== 'no-webgpu') throw e;
        sharedFallback = `${e.message}; the engine runs in a dedicated worker of this tab instead`;
      }
    }
  }
  // Spelled out in one expression so that bundlers (Vite, webpack 5, Parcel) recognize the
  // worker and bundle it with its imports; a URL held in a variable is copied as a lone file.
  const worker = options.workerUrl
    ? new Worker(options.workerUrl, { type: 'module' })
    : new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onerror = (e) => worker.onmessage?.({ data: { type: 'error', id: worker.loadId, message: `the engine's worker failed to start: ${e.message ?? 'see the console'}` } });
  const info = await loadIn(worker, { source: src, options: loadOptions }, options.onProgress).catch((e) => {
    worker.terminate();
    throw e;
  });
  const engine = new Engine(worker, info, options.onProgress, () => worker.terminate());
  if (sharedFallback) {
    engine.fallbackReason = [sharedFallback, engine.fallbackReason].filter(Boolean).join('; ');
    console.warn(`tandem: ${sharedFallback}`);
  }
  return engine;
}

/** Sends the 'load' message to `port` (a Worker or a MessagePort); resolves with the info. */
function loadIn(port, msg, onProgress) {
  const id = nextId++;
  port.loadId = id;
  return new Promise((resolve, reject) => {
    port.onmessage = (e) => {
      const reply = e.data;
      if (reply.id !== id) return;
      if (reply.type === 'progress') {
        if (reply.progress.warning) console.warn(`tandem: ${reply.progress.warning}`);
        onProgress?.(reply.progress);
      } else if (reply.type === 'loaded') resolve(reply.info);
      else reject(new TandemError(reply.message, reply.code));
    };
    port.postMessage({ type: 'load', id, ...msg });
  });
}

/** Why `shared: true` cannot be had here (the engine then runs in a dedicated worker), or null. */
function sharedUnavailable(src, draftModel) {
  if (typeof SharedWorker === 'undefined') return 'this browser has no SharedWorker; the engine runs in a dedicated worker of this tab';
  if (!globalThis.navigator?.locks) return 'this browser has no Web Locks (navigator.locks), which a shared engine needs to notice closed tabs; the engine runs in a dedicated worker of this tab';
  if (src.files || draftModel?.files) return 'a shared engine loads from URLs only (other tabs cannot name these files); the engine runs in a dedicated worker of this tab';
  return null;
}

/**
 * The engine of the SharedWorker named by `src` and the options: loaded by the first tab that
 * asks, attached to by the others. The tab holds a Web Lock for its lifetime; the worker asks
 * for it, and is granted it once the tab has closed or navigated away.
 */
async function createShared(src, loadOptions, options) {
  // One worker per model and engine options: tabs asking for another get an engine of their own.
  const name = `tandem ${JSON.stringify({ src, loadOptions })}`;
  const worker = options.workerUrl
    ? new SharedWorker(options.workerUrl, { type: 'module', name })
    : new SharedWorker(new URL('./worker.js', import.meta.url), { type: 'module', name });
  const port = worker.port;
  const tabLock = `tandem-tab-${globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random()}`}`;
  let release;
  await new Promise((held) => navigator.locks.request(tabLock, () => {
    held();
    return new Promise((r) => (release = r));
  }));
  const close = () => {
    port.close();
    release();
  };
  worker.onerror = (e) => port.onmessage?.({ data: { type: 'error', id: port.loadId, message: `the engine's shared worker failed to start: ${e.message ?? 'see the console'}` } });
  const graceMs = options.sharedGraceMs ?? 5000;
  if (!(Number.isFinite(graceMs) && graceMs >= 0)) throw new TandemError(`sharedGraceMs must be a number of milliseconds >= 0, not ${graceMs}`);
  const pageHasGpu = !!globalThis.navigator?.gpu;
  const info = await loadIn(port, { source: src, options: loadOptions, key: name, tabLock, graceMs, pageHasGpu }, options.onProgress).catch((e) => {
    close();
    throw e;
  });
  const engine = new Engine(port, info, options.onProgress, close);
  engine.shared = true;
  return engine;
}

function checkSpeculate(s) {
  if (s !== 'ngram') throw new TandemError(`speculate must be 'ngram' (or leave it out), not ${JSON.stringify(s)}`);
  return s;
}

export { TandemError };
