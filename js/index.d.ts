// Types of tandem's JavaScript API (js/index.js).

export interface Progress {
  /**
   * "download" counts bytes from the network and "cache" bytes read from the browser's cache
   * (all files of the model together); "upload" counts tensors moved to the backend, which
   * happens while the bytes arrive; "cache-skipped" carries a `warning` (the browser did not
   * keep a download, so it is read from the network again).
   */
  stage: 'download' | 'cache' | 'cache-skipped' | 'upload';
  loaded: number;
  /** The sizes of the files begun so far (a later file's size is known when it starts). */
  total: number;
  url?: string;
  /** The file the bytes are of: the URL's last segment ("model.safetensors"). */
  file?: string;
  /**
   * "download": bytes per second over the last few seconds (null until measured), counting
   * only bytes fetched now (a resumed download's cached part is in `loaded` from the start).
   */
  bytesPerSecond?: number | null;
  /** "download": `(total - loaded) / bytesPerSecond`; 0 when done, null until measured. */
  secondsLeft?: number | null;
  warning?: string;
  /** The draft model's load (see `draftModel`). */
  draft?: boolean;
  /** A load again after the GPU device was lost (see `EngineEvents`). */
  reload?: boolean;
}

export interface NamedData {
  name: string;
  data: Blob | ArrayBuffer | ArrayBufferView;
}

/**
 * A model's file(s). URL sources may carry the files' SHA-256 (64 hex digits, as `sha256sum`
 * prints them): one digest with `url`, digests by file name with `urls`
 * (`{ urls, sha256: { 'model.safetensors': '…' } }`). A file is checked when it is downloaded
 * (and the first time a digest is given for a file cached without one); one that does not
 * match is refused with an error naming it, the expected and the actual digest, and removed
 * from the cache. The size announced by the server is checked always.
 */
export type ModelSource =
  | string
  | { url: string; sha256?: string }
  | { urls: string[]; sha256?: Record<string, string> }
  | { files: Array<File | NamedData | ArrayBuffer> };

/** A KV cache storage type. */
export type KvDtype = 'f32' | 'f16' | 'q8_0' | 'q4_0' | 'fp8';

export interface EngineOptions {
  onProgress?: (progress: Progress) => void;
  /** "auto" (default): WebGPU when the browser has an adapter, else the CPU. */
  backend?: 'auto' | 'webgpu' | 'cpu';
  /** Most tokens (prompt and generated) one request may reach (default 2048, capped at the model's). */
  contextLength?: number;
  /** The older name of `contextLength` (both may be given only when they agree). */
  context?: number;
  /**
   * Most requests generating together (default 4): concurrent `generate` and
   * `chat.completions.create` calls are batched in the worker, and any beyond this wait.
   */
  maxSeqs?: number;
  /**
   * Tokens the KV cache holds across all requests in flight (default: `context`, shared). A
   * request that finds it full waits, or is recomputed later; only a prompt that could never
   * fit it fails.
   */
  kvTokens?: number;
  /**
   * The KV pool in bytes instead of `kvTokens`: a number, or a size like '64MiB', '1.5GB'
   * (as many whole blocks of 16 tokens as fit; `info.model.kv_bytes_per_token` a token).
   * Needs the model's config.json before its weights (not a lone GGUF).
   */
  kvCacheMemory?: number | string;
  /**
   * Most bytes the weights, KV pool and activations may take together (a number or a size
   * string). Before any weights download the engine plans from config.json and the weight
   * files' sizes (a one-byte Range request each, or the cache's copy): a default KV pool that
   * does not fit is shrunk (and the context with it), and a model whose weights and
   * activations alone exceed it is refused with the numbers. `info.memory` says what was
   * chosen and why.
   */
  memoryBudget?: number | string;
  /**
   * TESTING ONLY: GPU limits below the adapter's, to exercise the plan around them. A KV pool
   * whose one layer's buffer would exceed the binding size is cut; an activation buffer over
   * it moves 'auto' to the CPU and refuses 'webgpu'. Real limits come from the adapter.
   */
  debugLimits?: { maxStorageBufferBindingSize?: number; maxBufferSize?: number };
  /**
   * How the KV cache stores keys and values: 'f32' (default), 'f16', or 'q8_0' / 'q4_0' blocks
   * of 32 values with a scale (about half / a quarter of f16's memory a token: longer
   * conversations in a small GPU; attention reads them as they are).
   */
  kvDtype?: KvDtype;
  /**
   * The keys' and the values' storage each, overriding `kvDtype`. Keys set every attention
   * score, values only average into the output: `{ kDtype: 'f16', vDtype: 'q4_0' }` keeps
   * keys fine. Pairs: equal types, or values coarser (f16/q8_0, f16/q4_0, q8_0/q4_0).
   */
  kDtype?: KvDtype;
  vDtype?: KvDtype;
  /** Use shader-f16 when the adapter has it (default true). */
  allowF16?: boolean;
  /**
   * Keep downloads in the Cache API (default true), so a second load reads no network. A file
   * is stored in parts as it arrives: a download cut off (an error, a closed tab) keeps the
   * parts it finished, and the next load, after a reload too, fetches only the rest (a Range
   * request; a server that ignores Range sends it all again and the held bytes are skipped).
   * Tabs and workers of one origin share a download: one fetches, the others wait for it. A
   * download that does not fit the browser's storage quota fails with a message saying how
   * much it needs and how much is free; `false` streams from the network into the engine and
   * stores nothing.
   */
  cache?: boolean;
  /** Bytes per cached part of a download (default 32 MiB): for tests and tuning. */
  downloadPartBytes?: number;
  /**
   * Files of this many bytes or more are stored in the Origin Private File System instead,
   * where the engine's worker can write them (a dedicated worker, not a shared engine's), with
   * the same resuming and checks. Default: never (`Infinity`): measured alone, OPFS read large
   * files 2-3x as fast, but a cached model's load gained little or nothing from it
   * (bench/BROWSER.md). For tests and tuning.
   */
  opfsMinBytes?: number;
  /**
   * Speculative decoding with a draft model: a smaller model with the same tokenizer (e.g. a
   * q4 copy of the model, or a 135M model of the same family), loaded on the same backend. It
   * proposes up to `draftTokens` tokens and the model checks them in one step; the output is
   * the model's own (identical text when greedy, the same distribution when sampling). Its
   * load progress comes with `draft: true`.
   */
  draftModel?: ModelSource;
  /** Speculation without a draft model: n-gram lookup in the prompt and the text so far. */
  speculate?: 'ngram';
  /** Most tokens drafted per step (default 4; 1 to 16). */
  draftTokens?: number;
  /**
   * LoRA adapters held on the backend at once (default 0: adapters off). More may be loaded
   * (`Engine.loadAdapter`); a request for one not on the backend waits for a slot.
   */
  maxLoras?: number;
  /** The largest adapter rank (default 16). */
  maxLoraRank?: number;
  /** How adapters are stored on the backend: 'f32' (default) or 'f16' (half the memory). */
  loraDtype?: 'f32' | 'f16';
  /** Where the worker script is, if a bundler moved it. */
  workerUrl?: string | URL;
  /**
   * One engine for every tab of the origin: it runs in a SharedWorker named by the source and
   * these options. A tab asking for a model already loaded there (same source, same options)
   * attaches to it with no download and no load; any option that differs gives that tab an
   * engine (a SharedWorker) of its own. Requests from all tabs go through the one scheduler,
   * batched together, and are let into the engine round robin across tabs (at most `maxSeqs`
   * at once), so one tab's long queue does not hold back another tab's first token. A tab that
   * closes or navigates away has its requests aborted and their KV blocks freed (each tab holds
   * a Web Lock for its lifetime, which the worker waits for). `unload()` detaches this tab;
   * `interrupt()` stops this tab's requests; `loadAdapter` loads for every tab.
   * Where SharedWorker or Web Locks are missing, the source is `{ files }`, or the shared worker
   * has no WebGPU while the page has it, the engine runs in a dedicated worker as without
   * `shared` and `fallbackReason` says why.
   */
  shared?: boolean;
  /**
   * How long a shared engine stays loaded after its last tab called `unload()` (default 5000
   * ms), for a tab that comes back. Browsers end a SharedWorker once no page of it is left.
   */
  sharedGraceMs?: number;
}

/** The worker's counters (`Engine.workerStats()`), for tests and dashboards. */
export interface WorkerStats {
  /** Whether the worker is a SharedWorker. */
  shared: boolean;
  /** This tab's number among the worker's clients, and how many are connected. */
  client: number;
  clients: number;
  /** Models loaded by this worker (a tab that attached to a loaded one adds none). */
  loads: number;
  loaded: boolean;
  /** Generations in the engine now, all tabs together (the rest wait for admission). */
  inEngine: number;
  admissionLimit: number;
  /** Per connected tab: its generations in the engine, and those waiting to go in. */
  perClient: { client: number; running: number; queued: number }[];
  /** Engine steps that produced text, and of those the steps with text for more than one tab. */
  steps: number;
  sharedSteps: number;
  /** The most tabs, and the most requests, with text in one step. */
  mostClientsInStep: number;
  mostRequestsInStep: number;
}

/**
 * A LoRA adapter, given as a model is: the URL of a PEFT directory (its adapter_config.json
 * and adapter_model.safetensors) or of a LoRA GGUF, those files' URLs, or the files themselves.
 */
export type AdapterSource = ModelSource;

export interface GenerateOptions {
  max_tokens?: number;
  /** 0 is greedy; default 1. */
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  repetition_penalty?: number;
  /** Default: a random seed per call (when temperature > 0). */
  seed?: number;
  /** The LoRA adapter to run through, by its name (`Engine.loadAdapter`). */
  adapter?: string;
  stop?: string | string[];
  /** Keep generating past end-of-sequence tokens (tests, benchmarks). */
  ignore_eos?: boolean;
}

export interface TextGenerateOptions extends GenerateOptions, Pick<StructuredOptions, 'response_format' | 'regex' | 'grammar' | 'grammar_syntax'> {
  /** Interrupts this generation alone (finish_reason "interrupted"). */
  signal?: AbortSignal;
}

export interface RequestOptions {
  /** Interrupts this completion alone (finish_reason "interrupted"). */
  signal?: AbortSignal;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  finish_reason: 'stop' | 'length' | 'tool_calls' | 'interrupted';
  finish_detail: 'eos' | 'stop_string' | 'max_tokens' | 'context' | 'interrupted';
  /** From the call to the first generated token (waiting behind other requests included). */
  prefill_ms: number;
  decode_ms: number;
  prefill_tokens_per_second: number;
  decode_tokens_per_second: number;
  /** From the call to the request's first step (other requests filled the batch or the KV cache). */
  queue_ms: number;
  /** Prompt tokens reused from the KV cache of an earlier request with the same start. */
  cached_tokens: number;
  /** Times the request gave up its KV cache to others and was recomputed. */
  preemptions: number;
  /** Speculative decoding: draft tokens the model verified, and how many it accepted. */
  draft_tokens: number;
  accepted_tokens: number;
  /** The generated token ids. */
  token_ids: number[];
  /** The calls recognized in the output when tools were offered (their text is not in the content). */
  tool_calls: ToolCall[];
}

/** A call the model made, as OpenAI returns it: `arguments` is a JSON string. */
export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** A function the model may call: `parameters` is a JSON Schema of an object. */
export interface Tool {
  type: 'function';
  function: { name: string; description?: string; parameters?: object };
}

/** Output held to a shape (OpenAI's `response_format`). */
export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name: string; schema: object; strict?: boolean; description?: string } };

/** Structured output and tool calling, on WebGPU and the CPU fallback. */
export interface StructuredOptions {
  response_format?: ResponseFormat;
  /** tandem's own: the whole output matches this regular expression (Rust regex syntax). */
  regex?: string;
  /** tandem's own: the output is in this grammar's language (GBNF by default, or Lark). */
  grammar?: string;
  grammar_syntax?: 'gbnf' | 'lark';
  tools?: Tool[];
  /** `auto` (the default with tools): the model decides; `required` or a named function: decoding is held to a valid call. */
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };
  /** false: at most one call (with `required` or a named function). */
  parallel_tool_calls?: boolean;
}

export interface TextStream extends AsyncIterableIterator<string> {
  /** Resolves when the generation ends. */
  usage: Promise<Usage>;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | string;
  content: string | null;
  /** An assistant turn's calls (as a completion returned them). */
  tool_calls?: ToolCall[];
  /** A tool turn: the call it answers. */
  tool_call_id?: string;
  name?: string;
}

export interface ChatCompletionParams extends GenerateOptions, StructuredOptions {
  messages: ChatMessage[];
  stream?: boolean;
  /** A loaded LoRA adapter's name runs through that adapter; any other name, the base model. */
  model?: string;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{ index: number; message: { role: 'assistant'; content: string | null; tool_calls?: ToolCall[] }; finish_reason: Usage['finish_reason'] }>;
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: Array<{ index: number; delta: { role?: 'assistant'; content?: string; tool_calls?: Array<ToolCall & { index: number }> }; finish_reason: Usage['finish_reason'] | null }>;
  /** On the last chunk only. */
  usage?: Usage;
}

export interface EngineInfo {
  backend: { kind: 'webgpu' | 'cpu'; name: string; adapter: string; software: boolean; shader_f16: boolean; fallback_reason: string | null };
  model: { format: string; architecture: string; vocab_size: number; context: number; weight_bytes: number; has_chat_template: boolean; max_seqs: number; kv_tokens: number; max_loras: number; max_lora_rank: number };
  /**
   * The engine's WebAssembly memory after loading (it never shrinks, so this is its peak). On
   * WebGPU the weights live in GPU buffers, so this stays well below the model's size.
   */
  wasm_memory_bytes: number;
  /** Which speculative decoding runs: with `draftModel`, with `speculate: 'ngram'`, or none. */
  speculation: 'draft-model' | 'ngram' | null;
  /** The memory plan made before the weights loaded (bytes; estimates for scratch). */
  memory: MemoryPlan | null;
}

export interface MemoryPlan {
  weights_bytes: number;
  /** Chosen context and KV pool (null for a GGUF, whose config comes with its weights). */
  context: number | null;
  kv_blocks: number | null;
  kv_tokens: number | null;
  kv_block_bytes: number;
  kv_bytes: number;
  /** Activation buffers of one step, estimated. */
  scratch_bytes: number;
  total_bytes: number;
  budget: number | null;
  /** The GPU's largest storage buffer binding; null on the CPU. */
  max_binding: number | null;
  /** What was changed from what was asked, and why (e.g. "KV pool cut to 320 tokens ..."). */
  notes: string[];
}

/** `engine.stats()`: the model's memory now, in bytes. */
export interface MemoryStats {
  weights_bytes: number;
  /** One block (16 tokens) of every layer's K and V. */
  kv_block_bytes: number;
  kv_blocks_total: number;
  /** Blocks held by requests running or queued; back to 0 when none is. */
  kv_blocks_used: number;
  /** Idle blocks kept for prefix reuse (counted as free). */
  kv_blocks_cached: number;
  kv_bytes_total: number;
  kv_bytes_used: number;
  kv_bytes_free: number;
  /** Activation buffers of one step, estimated (not measured). */
  scratch_bytes: number;
}

/**
 * What an engine dispatches (as CustomEvents, with these as `detail`) when its GPU device is
 * lost (a driver reset, the GPU process restarting; `engine.debug.loseDevice()` in tests):
 * - 'device-lost': every request the engine held then (running or queued in it) has ended with
 *   a TandemError of `code` 'device-lost', whose message says so and gives the reason.
 * - 'reloading': the model is being loaded again on a new device, with the same options:
 *   URLs from the Cache API (no network when they are cached; `cache: false` downloads them
 *   again), Files, Blobs and ArrayBuffers (kept as Blobs) read again; adapters loaded with
 *   `loadAdapter` too (by URL: downloaded again). Progress goes to
 *   `onProgress` with `reload: true`. Requests made from now on wait for the reload and then run.
 * - 'ready': they run on the new engine. Should no WebGPU device be had, it runs on the CPU and
 *   `fallbackReason` says why (`engine.backend` and `engine.info` follow).
 * - 'reload-failed': the model could not be loaded again; every request fails with `message`.
 */
export interface EngineEvents {
  'device-lost': { type: 'device-lost'; reason: string };
  reloading: { type: 'reloading'; reason: string };
  ready: { type: 'ready'; info: EngineInfo; backend: string; fallbackReason: string | null; adapterErrors: string[] };
  'reload-failed': { type: 'reload-failed'; reason: string; message: string };
}

export interface Engine extends EventTarget {
  addEventListener<K extends keyof EngineEvents>(type: K, listener: (event: CustomEvent<EngineEvents[K]>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  /** The adapter's name, or "cpu". */
  readonly backend: string;
  /**
   * Why the CPU was chosen under backend "auto", or why `shared: true` got a dedicated worker
   * (both, joined with '; '); null otherwise.
   */
  readonly fallbackReason: string | null;
  /** Whether this engine is a SharedWorker's, shared with the origin's other tabs. */
  readonly shared: boolean;
  readonly info: EngineInfo;
  readonly chat: {
    completions: {
      create(params: ChatCompletionParams & { stream: true }, options?: RequestOptions): Promise<AsyncIterableIterator<ChatCompletionChunk>>;
      create(params: ChatCompletionParams & { stream?: false }, options?: RequestOptions): Promise<ChatCompletion>;
    };
  };
  /**
   * Runs alongside any other requests in flight on this engine. `prompt` is plain text (BOS
   * added when the tokenizer asks for it), or token ids fed exactly as given (no BOS).
   */
  generate(prompt: string | number[] | Uint32Array, options?: TextGenerateOptions): TextStream;
  /**
   * Loads a LoRA adapter under `name` (needs `maxLoras`); requests in flight go on. Requests
   * then name it in `adapter` (or chat.completions' `model`).
   */
  loadAdapter(name: string, source: AdapterSource): Promise<void>;
  /** New requests for `name` fail from now on; those running finish first. */
  unloadAdapter(name: string): Promise<void>;
  /** The model's memory now: weights, KV pool (total, used, free) and activations. */
  stats(): Promise<MemoryStats>;
  /**
   * Interrupts every request in flight (each ends with finish_reason "interrupted"); a shared
   * engine: this tab's requests only.
   */
  interrupt(): void;
  /** Frees the model and ends the worker; a shared engine: this tab leaves it. */
  unload(): Promise<void>;
  /** The worker's counters: loads, tabs, admission and batching across tabs. */
  workerStats(): Promise<WorkerStats>;
  /** Hooks for tests, not for applications. */
  readonly debug: {
    /**
     * TESTING ONLY: destroys the engine's GPU device (`GPUDevice.destroy()`), as a driver reset
     * would take it away; the engine then reloads as after a real loss (`EngineEvents`).
     * Rejects on the CPU backend.
     */
    loseDevice(): Promise<void>;
  };
}

export class TandemError extends Error {
  /** 'device-lost' when the request ended because the GPU device was lost. */
  readonly code?: 'device-lost';
}

export function createEngine(source: ModelSource, options?: EngineOptions): Promise<Engine>;
/**
 * The model files in the cache. A download cut off before its end is listed with
 * `partial: true`, `bytes` held so far and the file's `total` size (null when unknown).
 */
export function listCachedModels(): Promise<Array<{ url: string; bytes: number; partial?: true; total?: number | null }>>;
/** Removes a file (every part of it) from the cache; resolves to whether it was there. */
export function deleteCachedModel(url: string): Promise<boolean>;
