// tandem's demo page: load a model (preset, URL(s) or local files) on a chosen backend, then
// chat with it, streaming the answer and showing time to first token and tokens/s.
// Plain ES modules, no bundler: the package is imported straight from the repository.

import { createEngine } from '../js/index.js';

const $ = (id) => document.getElementById(id);
const ui = {
  preset: $('preset'), url: $('model-url'), files: $('model-files'), backend: $('backend'),
  load: $('load'), unload: $('unload'), progressBox: $('progress-box'), progress: $('progress'),
  progressText: $('progress-text'), modelName: $('model-name'), backendName: $('backend-name'),
  fallback: $('fallback-reason'), chat: $('chat'), form: $('chat-form'), prompt: $('prompt'),
  maxTokens: $('max-tokens'), temperature: $('temperature'), send: $('send'), stop: $('stop'),
  clear: $('clear'), ttft: $('ttft'), tps: $('tps'), tokens: $('tokens'), error: $('error'),
};

let engine = null;
let loading = false;
let generating = false;
/** The conversation, as chat messages. */
let messages = [];

// ---------- errors: shown in the page, not only in the console ----------

function showError(error, context) {
  const message = error instanceof Error ? error.message : String(error);
  ui.error.textContent = context ? `${context}: ${message}` : message;
  ui.error.hidden = false;
  console.error(context ?? 'tandem demo', error);
}
function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = '';
}
window.addEventListener('error', (e) => showError(e.error ?? e.message, 'Unexpected error'));
window.addEventListener('unhandledrejection', (e) => showError(e.reason, 'Unexpected error'));

// ---------- formatting ----------

function bytes(n) {
  if (!Number.isFinite(n) || n <= 0) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}
const stageNames = { download: 'Downloading', cache: 'Reading from the browser cache', 'cache-skipped': 'Not cached', upload: 'Uploading tensors' };

// Bytes arrive (download / cache) while tensors upload: both show, the bar follows the tensors
// once they have started (that is the load's real progress), the bytes before.
let shown = { bytes: null, upload: null, warning: null };

function resetProgress() {
  shown = { bytes: null, upload: null, warning: null };
  ui.progressBox.hidden = false;
  ui.progress.removeAttribute('value');
  ui.progressText.textContent = 'Starting…';
}

function setProgress(p) {
  ui.progressBox.hidden = false;
  if (p.warning) shown.warning = p.warning;
  else if (p.stage === 'upload') shown.upload = p;
  else shown.bytes = p;
  const { bytes: b, upload: u } = shown;
  const bar = u ?? b;
  if (bar && bar.total > 0) {
    ui.progress.max = bar.total;
    ui.progress.value = Math.min(bar.loaded, bar.total);
  } else {
    ui.progress.removeAttribute('value'); // indeterminate
  }
  const parts = [];
  if (b) parts.push(`${stageNames[b.stage] ?? b.stage}: ${b.total > 0 ? `${bytes(b.loaded)} / ${bytes(b.total)}` : bytes(b.loaded)}`);
  if (u) parts.push(`${u.loaded} / ${u.total} tensors uploaded`);
  if (shown.warning) parts.push(shown.warning);
  ui.progressText.textContent = parts.join(' · ');
}

// ---------- model choice ----------

/** The source that the model panel describes, and a label for it. */
function chosenSource() {
  const files = Array.from(ui.files.files ?? []);
  if (files.length) return { source: { files }, label: files.map((f) => f.name).join(', ') };
  const urls = ui.url.value.split(/[\s,]+/).filter(Boolean);
  if (!urls.length) throw new Error('choose a model first: a preset, a URL, or local files');
  const label = urls.length === 1 ? urls[0] : urls.find((u) => /\.(safetensors|gguf)$/i.test(u)) ?? urls[0];
  return { source: urls.length === 1 ? { url: urls[0] } : { urls }, label };
}

// A file choice wins over the URL field; choosing a preset or typing a URL clears the files.
ui.preset.addEventListener('change', () => {
  if (ui.preset.value) ui.url.value = ui.preset.value;
  ui.files.value = '';
});
ui.url.addEventListener('input', () => {
  ui.files.value = '';
  ui.preset.value = '';
});

/** Marks presets whose files the server does not have, and picks the first available one as default. */
async function probePresets() {
  let firstAvailable = null;
  for (const option of ui.preset.options) {
    if (!option.value) continue;
    const urls = option.value.split(' ');
    const ok = await Promise.all(urls.map((u) => fetch(u, { method: 'HEAD' }).then((r) => r.ok, () => false)));
    if (ok.every(Boolean)) firstAvailable ??= option;
    else {
      option.disabled = true;
      option.textContent += ' — not found on this server';
    }
  }
  if (firstAvailable && !ui.url.value && !ui.files.files?.length) {
    ui.preset.value = firstAvailable.value;
    ui.url.value = firstAvailable.value;
  }
}

// ---------- loading ----------

function setBusy() {
  ui.load.disabled = loading || generating;
  ui.unload.disabled = !engine || loading || generating;
  ui.prompt.disabled = !engine || loading;
  ui.send.disabled = !engine || loading || generating;
  ui.stop.disabled = !generating;
}

async function unloadEngine() {
  const old = engine;
  engine = null;
  ui.modelName.textContent = 'none loaded';
  ui.backendName.textContent = '—';
  ui.fallback.textContent = '—';
  setBusy();
  if (old) await old.unload();
}

ui.load.addEventListener('click', async () => {
  clearError();
  let chosen;
  try {
    chosen = chosenSource();
  } catch (e) {
    return showError(e, 'Cannot load');
  }
  loading = true;
  setBusy();
  try {
    await unloadEngine();
    ui.modelName.textContent = `loading ${chosen.label}…`;
    resetProgress();
    const t0 = performance.now();
    engine = await createEngine(chosen.source, { backend: ui.backend.value, onProgress: setProgress });
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    const m = engine.info.model;
    ui.modelName.textContent = `${chosen.label.split('/').pop()} (${m.architecture}, ${m.format}, ${bytes(m.weight_bytes)}, context ${m.context})`;
    ui.backendName.textContent = engine.info.backend.kind === 'cpu' ? 'cpu (WebAssembly)' : `webgpu: ${engine.backend}${engine.info.backend.software ? ' (software adapter)' : ''}`;
    ui.fallback.textContent = engine.fallbackReason ?? 'none';
    ui.progressText.textContent = `Loaded in ${seconds} s`;
    note(m.has_chat_template
      ? `Model loaded on ${engine.backend}. Say something.`
      : `Model loaded on ${engine.backend}. It has no chat template: each message is continued as plain text.`);
  } catch (e) {
    engine = null;
    ui.modelName.textContent = 'none loaded';
    ui.progressBox.hidden = true;
    showError(e, 'Could not load the model');
  } finally {
    loading = false;
    setBusy();
  }
});

ui.unload.addEventListener('click', async () => {
  clearError();
  try {
    await unloadEngine();
    ui.progressBox.hidden = true;
  } catch (e) {
    showError(e, 'Could not unload');
  }
});

// ---------- chat ----------

function bubble(role, text = '') {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  ui.chat.append(div);
  ui.chat.scrollTop = ui.chat.scrollHeight;
  return div;
}
const note = (text) => bubble('note', text);

ui.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    ui.form.requestSubmit();
  }
});

ui.stop.addEventListener('click', () => engine?.interrupt());

ui.clear.addEventListener('click', () => {
  if (generating) engine?.interrupt();
  messages = [];
  ui.chat.textContent = '';
});

ui.form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const content = ui.prompt.value.trim();
  if (!engine || generating || !content) return;
  clearError();
  const maxTokens = Number(ui.maxTokens.value) || 128;
  const temperature = Number(ui.temperature.value);
  if (!(temperature >= 0)) return showError('temperature must be a number ≥ 0', 'Cannot send');
  ui.prompt.value = '';
  messages.push({ role: 'user', content });
  bubble('user', content);
  const out = bubble('assistant');
  out.classList.add('streaming');
  generating = true;
  setBusy();
  ui.ttft.textContent = '…';
  ui.tps.textContent = '…';
  ui.tokens.textContent = '…';

  const params = { max_tokens: maxTokens, temperature };
  const t0 = performance.now();
  let firstAt = null;
  let pieces = 0;
  let text = '';
  let usage = null;
  const onPiece = (piece) => {
    if (!piece) return;
    const now = performance.now();
    if (firstAt === null) {
      firstAt = now;
      ui.ttft.textContent = `${(now - t0).toFixed(0)} ms`;
    }
    pieces++;
    text += piece;
    out.textContent = text;
    ui.chat.scrollTop = ui.chat.scrollHeight;
    const elapsed = (now - firstAt) / 1000;
    if (elapsed > 0.2) ui.tps.textContent = `≈ ${((pieces - 1) / elapsed).toFixed(1)} tok/s (streaming)`;
  };
  try {
    if (engine.info.model.has_chat_template) {
      const chunks = await engine.chat.completions.create({ messages, stream: true, ...params });
      for await (const chunk of chunks) {
        onPiece(chunk.choices[0]?.delta?.content);
        if (chunk.usage) usage = chunk.usage;
      }
    } else {
      const stream = engine.generate(content, params);
      for await (const piece of stream) onPiece(piece);
      usage = await stream.usage;
    }
    messages.push({ role: 'assistant', content: text });
    if (usage) {
      ui.tps.textContent = `${usage.decode_tokens_per_second.toFixed(1)} tok/s`;
      ui.tokens.textContent = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} generated (${usage.finish_reason})`;
      if (firstAt === null) ui.ttft.textContent = `${usage.prefill_ms.toFixed(0)} ms (prefill, no text)`;
      if (usage.finish_reason === 'interrupted') note('stopped');
    }
  } catch (err) {
    if (text) messages.push({ role: 'assistant', content: text });
    else messages.pop(); // the user message got no answer: let it be sent again
    ui.tps.textContent = '—';
    showError(err, 'Generation failed');
  } finally {
    out.classList.remove('streaming');
    generating = false;
    setBusy();
    ui.prompt.focus();
  }
});

setBusy();
probePresets().catch((e) => showError(e, 'Could not check the presets'));
// For tests and the curious.
window.tandemDemo = { get engine() { return engine; }, get messages() { return messages; } };
