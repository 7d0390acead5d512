// The worker that owns the engine: downloads, loads and generates off the page's thread.
// The page talks to it only through index.js; each message carries the request's id.

import init, { Engine } from '../pkg/tandem_web.js';
import { fetchCached, fileNameOf } from './cache.js';

let ready = null;
let engine = null;

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

async function readInput(input, i, count) {
  // A File or a { name, data } pair; data a Blob, an ArrayBuffer or a typed array.
  let name = input.name;
  let data = input instanceof Blob ? input : input.data;
  if (data === undefined && (input instanceof ArrayBuffer || ArrayBuffer.isView(input))) data = input;
  if (!name) {
    if (count === 1) name = 'model.gguf';
    else throw new Error(`file ${i} has no name (give { name, data } for ArrayBuffers)`);
  }
  if (data instanceof Blob) data = await data.arrayBuffer();
  if (ArrayBuffer.isView(data)) data = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (!(data instanceof ArrayBuffer || data instanceof Uint8Array)) {
    throw new Error(`file '${name}': expected a File, Blob, ArrayBuffer or typed array`);
  }
  return { name, data };
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

async function load(id, source, options) {
  const progress = (p) => post({ type: 'progress', id, progress: p });
  ready ??= init();
  await ready;
  let files;
  if (source.url || source.urls) {
    const urls = source.urls ?? [source.url];
    files = [];
    // Overall byte counts across every file of the model.
    const totals = new Map();
    for (const url of urls) {
      const bytes = await fetchCached(url, (p) => {
        totals.set(url, p);
        let loaded = 0, total = 0;
        for (const q of totals.values()) { loaded += q.loaded; total += q.total; }
        progress({ ...p, loaded, total });
      });
      files.push({ name: fileNameOf(url), data: bytes });
    }
  } else if (source.files) {
    files = [];
    for (const [i, f] of source.files.entries()) files.push(await readInput(f, i, source.files.length));
  } else {
    throw new Error('the source must be { url }, { urls } or { files }');
  }
  const opts = { backend: options.backend ?? 'auto', context: options.context, allow_f16: options.allowF16 };
  engine = await Engine.create(files, JSON.stringify(opts), (stage, loaded, total) => progress({ stage, loaded, total }));
  files = null;
  const info = JSON.parse(engine.info);
  info.backend.name = info.backend.kind === 'cpu' ? 'cpu' : await adapterName(info.backend);
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
        const usage = await engine.generate(JSON.stringify(msg.request), (text) => post({ type: 'text', id: msg.id, text }));
        post({ type: 'done', id: msg.id, usage: JSON.parse(usage) });
        break;
      }
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
