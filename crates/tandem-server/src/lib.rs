//! tandem's OpenAI-compatible HTTP server. The HTTP layer is thin: it parses and validates a
//! request, hands it to the model's scheduler (one engine thread per model, see [`engine`]),
//! and streams the events back; a dropped connection aborts the request the way a stop does.
//!
//! The server knows no backend: whoever loads a model calls [`EngineSeat::serve`] on the
//! thread that created the backend (`tandem serve` does this per `--model`; tests use the CPU).

mod api;
mod config;
mod engine;
mod errors;
#[doc(hidden)]
pub mod fuzz;
mod logprobs;
mod lora;
mod metrics;
mod routes;
mod sse;
pub(crate) mod structured;
mod submit;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{select_all, BoxFuture, FutureExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ServerConfig;
use engine::{Command, ModelHandle};
pub use engine::{EngineSeat, ModelState, Ready};
use errors::ApiError;
use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no models to serve")]
    NoModels,
    #[error("two models are named '{0}' (name them: --model NAME=PATH)")]
    DuplicateModel(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("model {model} failed to load: {reason}")]
    LoadFailed { model: String, reason: String },
}

/// The HTTP side: the models by name, the metrics, and whether it is shutting down.
pub struct Server {
    config: ServerConfig,
    models: Vec<Arc<ModelHandle>>,
    metrics: Metrics,
    shutting_down: AtomicBool,
    /// The first model that failed to load, which ends the server.
    failure: Mutex<Option<ServerError>>,
}

/// What a request's `model` names: the model that runs it, its state, and the LoRA adapter
/// it goes through (if it names one).
type Target = (Arc<ModelHandle>, Arc<Ready>, Option<String>);

impl Server {
    /// A server for these models (the first is the default for requests naming none), and one
    /// engine seat per model, in the same order, for the threads that will load them.
    pub fn new(
        config: ServerConfig,
        names: Vec<String>,
    ) -> Result<(Arc<Self>, Vec<EngineSeat>), ServerError> {
        if names.is_empty() {
            return Err(ServerError::NoModels);
        }
        let metrics = Metrics::default();
        let mut models = Vec::new();
        let mut seats = Vec::new();
        for name in names {
            if models.iter().any(|m: &Arc<ModelHandle>| m.name == name) {
                return Err(ServerError::DuplicateModel(name));
            }
            let (handle, seat) =
                engine::seat(name.clone(), metrics.for_model(&name), config.max_waiting);
            models.push(handle);
            seats.push(seat);
        }
        let server = Server {
            config,
            models,
            metrics,
            shutting_down: AtomicBool::new(false),
            failure: Mutex::new(None),
        };
        Ok((Arc::new(server), seats))
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// The model a request names (the first one when it names none), or the model serving the
    /// LoRA adapter it names, with the adapter's name.
    fn model(&self, name: Option<&str>) -> Result<(&Arc<ModelHandle>, Option<String>), ApiError> {
        match name {
            None | Some("") => Ok((&self.models[0], None)),
            Some(n) => {
                if let Some(m) = self.models.iter().find(|m| m.name == n) {
                    return Ok((m, None));
                }
                self.models
                    .iter()
                    .find(|m| m.adapters().iter().any(|a| a == n))
                    .map(|m| (m, Some(n.to_string())))
                    .ok_or_else(|| {
                        let mut known = self.names();
                        known.extend(self.models.iter().flat_map(|m| m.adapters()));
                        ApiError::model_not_found(n, &known)
                    })
            }
        }
    }

    /// The named model (or the model of the named adapter, with its name), if it can take
    /// requests now.
    fn ready(&self, name: Option<&str>) -> Result<Target, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let (model, adapter) = self.model(name)?;
        match model.state() {
            ModelState::Ready(r) => Ok((model.clone(), r, adapter)),
            ModelState::Loading => {
                Err(ApiError::unavailable(format!("the model '{}' is still loading", model.name)))
            }
            ModelState::Failed(why) => Err(ApiError::unavailable(format!(
                "the model '{}' failed to load: {why}",
                model.name
            ))),
        }
    }

    /// Serves on `listener` until `shutdown` resolves or a model fails to load. Then it admits
    /// nothing new, lets running requests finish for up to the shutdown timeout, aborts the
    /// rest, and stops the engine threads (join them after this returns).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (closing, closed) = watch::channel(false);
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => {}
                failure = me.load_failure() => {
                    eprintln!("error: {failure}");
                    *me.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
                }
            }
            me.shutting_down.store(true, Ordering::SeqCst);
            me.each_engine(|| Command::Drain);
            let _ = closing.send(true);
            tokio::time::sleep(me.config.shutdown_timeout).await;
            // Streams still going get their `abort` finish and end, which lets serve return.
            me.each_engine(|| Command::Stop);
        });
        let mut closed = closed;
        let app = routes::router(self.clone());
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = closed.wait_for(|&c| c).await;
            })
            .await;
        self.each_engine(|| Command::Stop);
        if let Some(failure) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(failure);
        }
        Ok(result?)
    }

    /// Binds `host:port`, serves until SIGINT or SIGTERM (see [`Server::serve`]) on a runtime
    /// of its own: the caller needs no async code.
    pub fn run(self: Arc<Self>) -> Result<(), ServerError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?;
        let me = self.clone();
        let served = runtime.block_on(async move {
            let addr = format!("{}:{}", me.config.host, me.config.port);
            let listener = TcpListener::bind((me.config.host.as_str(), me.config.port))
                .await
                .map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
            eprintln!("listening on http://{}", listener.local_addr()?);
            me.serve(listener, shutdown_signal()).await
        });
        // Also when it never served (the port was taken): the engine threads must end.
        self.each_engine(|| Command::Stop);
        served
    }

    fn each_engine(&self, command: impl Fn() -> Command) {
        for m in &self.models {
            m.send(command());
        }
    }

    /// Resolves with the first model that fails to load; never if none does.
    async fn load_failure(&self) -> ServerError {
        let waits: Vec<BoxFuture<'static, ServerError>> = self
            .models
            .iter()
            .map(|m| {
                let (name, mut state) = (m.name.clone(), m.state.subscribe());
                async move {
                    if let Ok(s) = state.wait_for(|s| matches!(s, ModelState::Failed(_))).await {
                        if let ModelState::Failed(reason) = &*s {
                            return ServerError::LoadFailed { model: name, reason: reason.clone() };
                        }
                    }
                    std::future::pending().await
                }
                .boxed()
            })
            .collect();
        select_all(waits).await.0
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("shutting down: admitting no new requests, letting running ones finish");
}
