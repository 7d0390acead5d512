//! Starting a server in-process on 127.0.0.1 (port 0) with stories260K on the CPU, a plain
//! HTTP client for it, and the reference output (`tandem_core::generate`) to compare with.
#![allow(dead_code)] // each test binary uses its own part of this

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tandem_core::generate::{generate, GenerateParams, Generation};
use tandem_core::lora::Adapter;
use tandem_core::model::{LoraOptions, Model, ModelOptions, Output, Want};
use tandem_core::sampling::SamplingParams;
use tandem_core::scheduler::{SchedulerConfig, Speculation};
use tandem_core::tokenizer::{ChatMessage, Tokenizer};
use tandem_cpu::{CpuBackend, CpuMode};
use tandem_server::{Server, ServerConfig};
use tokio::sync::oneshot;

/// A template for stories260K, which ships none, so the chat route can be tested on it.
pub const CHAT_TEMPLATE: &str =
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

/// stories260K's directory, or `None` (SKIP printed; the caller returns). A failure instead
/// under `TANDEM_REQUIRE_MODELS=1`.
pub fn stories() -> Option<PathBuf> {
    tandem_testkit::shared_model("stories260K", &["model.safetensors"])
}

pub fn tokenizer(dir: &std::path::Path) -> Tokenizer {
    let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let config = std::fs::read(dir.join("tokenizer_config.json")).unwrap();
    Tokenizer::from_bytes(&json, Some(&config), Some(CHAT_TEMPLATE.into())).unwrap()
}

fn load(dir: &std::path::Path, kv_blocks: Option<usize>) -> Model<CpuBackend> {
    let source = tandem_core::loader::open(dir).unwrap();
    let opts = ModelOptions { context: 512, kv_blocks, ..ModelOptions::default() };
    Model::load(
        CpuBackend::new(CpuMode::Fast { threads: 1 }).unwrap(),
        &source,
        &opts,
        &mut |_, _| {},
    )
    .unwrap()
}

pub struct Options {
    pub config: ServerConfig,
    /// Model names; each serves stories260K.
    pub names: Vec<String>,
    pub kv_blocks: Option<usize>,
    pub sched: SchedulerConfig,
    /// Speculative decoding on every engine: n-gram drafting (`Some(None)`) or stories260K
    /// drafting for itself (`Some(Some(k))`, k tokens).
    pub speculate: Option<Option<usize>>,
    /// LoRA pools on every engine, and the PEFT adapter directories each serves by name.
    pub lora: Option<(LoraOptions, Vec<(String, PathBuf)>)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: ServerConfig { port: 0, ..ServerConfig::default() },
            names: vec!["stories".into()],
            kv_blocks: Some(512),
            sched: SchedulerConfig { max_seqs: 64, max_batched_tokens: 256 },
            speculate: None,
            lora: None,
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    serving: tokio::task::JoinHandle<Result<(), tandem_server::ServerError>>,
    engines: Vec<std::thread::JoinHandle<()>>,
}

/// Starts a server with one engine thread per name and waits until /health says ready.
pub async fn start(dir: &std::path::Path, o: Options) -> TestServer {
    let (server, seats) = Server::new(o.config, o.names).unwrap();
    let engines = seats
        .into_iter()
        .map(|seat| {
            let (dir, kv, sched, speculate) =
                (dir.to_path_buf(), o.kv_blocks, o.sched, o.speculate);
            let lora = o.lora.clone();
            std::thread::spawn(move || {
                let spec = speculate.map(|draft| match draft {
                    None => Speculation::ngram(4),
                    Some(k) => Speculation::draft_model(load(&dir, kv), k),
                });
                let mut model = load(&dir, kv);
                let mut adapters = vec![];
                if let Some((opts, dirs)) = lora {
                    model.enable_lora(opts).unwrap();
                    for (name, d) in dirs {
                        let a = Adapter::from_peft_dir(&d, &model.config).unwrap();
                        adapters.push((name, Arc::new(a)));
                    }
                }
                seat.serve_adapters(model, tokenizer(&dir), sched, spec, adapters).unwrap()
            })
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(Arc::clone(&server).serve(listener, async {
        let _ = stopped.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let t = TestServer { addr, client, stop: Some(stop), serving, engines };
    for _ in 0..600 {
        if t.get("/health").await.0 == StatusCode::OK {
            return t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the server never became ready");
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.client.request(req.body(Full::new(body.into())).unwrap()).await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let res = self.send("GET", path, Bytes::new(), &[]).await;
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// POSTs raw bytes; the answer's status and JSON body.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let res = self.send("POST", path, body, headers).await;
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
        });
        (status, json)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string(), &[]).await
    }

    /// A streaming request read to the end: every `data:` payload before `[DONE]`, parsed.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let mut s = self.open_stream(path, body).await;
        let mut chunks = vec![];
        while let Some(data) = s.next().await {
            if data == "[DONE]" {
                assert!(s.next().await.is_none(), "data after [DONE]");
                return chunks;
            }
            chunks.push(serde_json::from_str(&data).unwrap());
        }
        panic!("the stream ended without [DONE]: {chunks:?}");
    }

    pub async fn open_stream(&self, path: &str, body: &Value) -> SseReader {
        let res = self.send("POST", path, body.to_string(), &[]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        SseReader::new(res)
    }

    /// One metric's value for the model `model`, read from /metrics.
    pub async fn metric(&self, name: &str, model: &str) -> f64 {
        self.series(&format!("{name}{{model=\"{model}\"}}")).await
    }

    /// The value of the series written exactly `series` (name and labels).
    pub async fn series(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        let prefix = format!("{series} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
        line[prefix.len()..].trim().parse().unwrap()
    }

    /// What SIGINT does to `tandem serve`.
    pub fn signal_shutdown(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }

    /// Signals shutdown and waits for the server and its engine threads to end.
    pub async fn shutdown(mut self) -> Result<(), tandem_server::ServerError> {
        self.signal_shutdown();
        let served = (&mut self.serving).await.unwrap();
        for e in std::mem::take(&mut self.engines) {
            tokio::task::spawn_blocking(move || e.join().unwrap()).await.unwrap();
        }
        served
    }
}

/// Reads server-sent events off a response body.
pub struct SseReader {
    body: Incoming,
    buf: String,
}

impl SseReader {
    pub fn new(res: Response<Incoming>) -> Self {
        SseReader { body: res.into_body(), buf: String::new() }
    }

    /// The next event's data (keep-alive comments skipped); `None` at the end of the body.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

/// What `tandem_core::generate::generate` gives alone on a model of its own.
pub struct Reference {
    model: Model<CpuBackend>,
    pub tok: Tokenizer,
}

impl Reference {
    pub fn new(dir: &std::path::Path) -> Self {
        Reference { model: load(dir, None), tok: tokenizer(dir) }
    }

    /// Greedy text and number of generated tokens.
    pub fn greedy(&mut self, prompt: &[u32], max_tokens: usize) -> (String, usize) {
        self.greedy_with(prompt, max_tokens, false)
    }

    pub fn greedy_with(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        ignore_eos: bool,
    ) -> (String, usize) {
        let params = GenerateParams {
            max_tokens,
            sampling: SamplingParams::default(),
            stop: vec![],
            ignore_eos,
            constraint: None,
            adapter: None,
        };
        let g = self.generate(prompt, &params);
        (g.text, g.tokens.len())
    }

    pub fn generate(&mut self, prompt: &[u32], params: &GenerateParams) -> Generation {
        pollster::block_on(generate(&mut self.model, &self.tok, prompt, params, &mut |_| {}))
            .unwrap()
    }

    /// The raw logits ([vocab]) the model gives before each of `tokens` when they follow
    /// `prompt`: the prompt in one step, then one decode step per token, as the scheduler runs
    /// a request alone.
    pub fn logits_before(&mut self, prompt: &[u32], tokens: &[u32]) -> Vec<Vec<f32>> {
        let mut seq = self.model.new_sequence();
        let mut out = vec![];
        let mut feed = prompt.to_vec();
        for &t in tokens {
            match pollster::block_on(self.model.forward(&mut seq, &feed, Want::Logits)).unwrap() {
                Output::Logits(l) => out.push(l),
                Output::Token(_) => unreachable!("logits were asked for"),
            }
            feed = vec![t];
        }
        self.model.release(&mut seq);
        out
    }

    /// A text prompt as the completions route encodes it (BOS first).
    pub fn text_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.tok.bos_id().unwrap()];
        ids.extend(self.tok.encode(text).unwrap());
        ids
    }

    pub fn chat_prompt(&self, user: &str) -> Vec<u32> {
        let text = self.tok.apply_chat_template(&[ChatMessage::new("user", user)], true).unwrap();
        self.tok.encode(&text).unwrap()
    }
}

/// The text a stream's chunks carry, per choice, and each choice's finish_reason.
pub fn stream_text(chunks: &[Value], chat: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![];
    for c in chunks {
        for ch in c["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, Default::default());
            }
            let text = if chat { ch["delta"]["content"].as_str() } else { ch["text"].as_str() };
            out[i].0.push_str(text.unwrap_or(""));
            if let Some(r) = ch["finish_reason"].as_str() {
                out[i].1 = r.to_string();
            }
        }
    }
    out
}

/// Runs tests/clients/`script` (a Python client of the server at `base`, model `model`) off the
/// runtime's workers (the server runs on them meanwhile) and returns the JSON it prints.
#[allow(dead_code)]
pub async fn python_client(script: &str, base: String, model: &str) -> Value {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let model = model.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args([&path, &base, &model]).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}
