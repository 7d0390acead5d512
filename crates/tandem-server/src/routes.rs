//! The endpoints: parse and validate, hand over to the model's engine, answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::api::{
    self, ChatRequest, Common, CompletionRequest, DetokenizeRequest, Job, TokenizeRequest,
};
use crate::engine::{ModelHandle, ModelState};
use crate::errors::ApiError;
use crate::logprobs::TokenNames;
use crate::submit::{self, Kind, Meta};
use crate::{sse, structured, Server};

pub(crate) type Body = Result<Bytes, BytesRejection>;

pub fn router(server: Arc<Server>) -> Router {
    let limit = server.config.max_body_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/load_lora_adapter", post(crate::lora::load))
        .route("/v1/unload_lora_adapter", post(crate::lora::unload))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(server.clone(), auth));
    Router::new()
        .merge(api)
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(server)
}

/// The chat page: it calls the API from the browser, with the key the user types in.
async fn page() -> Html<&'static str> {
    Html(include_str!("chat.html"))
}

/// Checks `Authorization: Bearer KEY` when the server has a key.
async fn auth(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.trim().as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference, so timing does not leak the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body, or 413 past the limit.
pub(crate) fn read(s: &Server, body: Body) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(s.config.max_body_bytes)
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", r.body_text()))
        }
    })
}

/// Tokenizing a long prompt takes a while: off the async workers, so other requests go on.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a blocking task failed: {e}")))?
}

async fn chat(State(s): State<Arc<Server>>, body: Body) -> Result<Response, ApiError> {
    let body = api::parse(&read(&s, body)?)?;
    let (req, common): (ChatRequest, Common) = (api::fields(&body)?, api::fields(&body)?);
    let fields: structured::Fields = api::fields(&body)?;
    let (model, ready, adapter) = s.ready(common.model.as_deref())?;
    let names = ready.names.clone();
    let job = blocking(move || req.job(common, fields, &ready)).await?;
    generate(model, adapter, job, Kind::Chat, names).await
}

async fn completions(State(s): State<Arc<Server>>, body: Body) -> Result<Response, ApiError> {
    let body = api::parse(&read(&s, body)?)?;
    let (req, common): (CompletionRequest, Common) = (api::fields(&body)?, api::fields(&body)?);
    let fields: structured::Fields = api::fields(&body)?;
    let (model, ready, adapter) = s.ready(common.model.as_deref())?;
    let names = ready.names.clone();
    let job = blocking(move || req.job(common, fields, &ready)).await?;
    generate(model, adapter, job, Kind::Completion, names).await
}

/// Submits the job (through LoRA adapter `adapter`, if named) and answers: a stream of
/// chunks, or the whole response. `names` spells the tokens of log-probabilities, if the job
/// asks for them.
async fn generate(
    model: Arc<ModelHandle>,
    adapter: Option<String>,
    mut job: Job,
    kind: Kind,
    names: Arc<TokenNames>,
) -> Result<Response, ApiError> {
    for (_, params) in &mut job.choices {
        params.adapter = adapter.clone();
    }
    let shown = adapter.as_deref().unwrap_or(&model.name);
    let mut meta = Meta::new(kind, shown, job.n, job.logprobs.then_some(names));
    meta.tools = job.tools;
    let (stream, include_usage) = (job.stream, job.include_usage);
    let pending = submit::submit(&model, job).await?;
    if stream {
        Ok(sse::respond(pending, meta, include_usage))
    } else {
        Ok(Json(submit::collect(pending, &meta).await?).into_response())
    }
}

async fn models(State(s): State<Arc<Server>>) -> Json<serde_json::Value> {
    let data: Vec<_> = s
        .models
        .iter()
        .flat_map(|m| {
            let (created, context) = match m.state() {
                ModelState::Ready(r) => (r.created, Some(r.context)),
                _ => (0, None),
            };
            let base = json!({ "id": m.name, "object": "model", "created": created, "owned_by": "tandem", "max_model_len": context });
            // Each LoRA adapter is a model of its own, with its base as parent (as vLLM lists
            // them).
            let adapters = m.adapters().into_iter().map(move |a| {
                json!({ "id": a, "object": "model", "created": created, "owned_by": "tandem", "parent": m.name, "root": m.name, "max_model_len": context })
            });
            std::iter::once(base).chain(adapters)
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// 200 once every model is loaded; 503 while any is loading (or failed), or when shutting down.
async fn health(State(s): State<Arc<Server>>) -> Response {
    let states: serde_json::Map<String, serde_json::Value> = s
        .models
        .iter()
        .map(|m| {
            let state = match m.state() {
                ModelState::Ready(_) => "ready".to_string(),
                ModelState::Loading => "loading".to_string(),
                ModelState::Failed(why) => format!("failed: {why}"),
            };
            (m.name.clone(), state.into())
        })
        .collect();
    let all_ready = s.models.iter().all(|m| matches!(m.state(), ModelState::Ready(_)));
    let (status, word) = if s.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if all_ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    (status, Json(json!({ "status": word, "models": states }))).into_response()
}

async fn metrics(State(s): State<Arc<Server>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], s.metrics.encode()).into_response()
}

async fn tokenize(
    State(s): State<Arc<Server>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: TokenizeRequest = api::fields(&api::parse(&read(&s, body)?)?)?;
    let (_, ready, _) = s.ready(req.model.as_deref())?;
    let context = ready.context;
    let tokens = blocking(move || req.tokens(&ready.tokenizer)).await?;
    Ok(Json(json!({ "count": tokens.len(), "max_model_len": context, "tokens": tokens })))
}

async fn detokenize(
    State(s): State<Arc<Server>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: DetokenizeRequest = api::fields(&api::parse(&read(&s, body)?)?)?;
    let (_, ready, _) = s.ready(req.model.as_deref())?;
    let text = blocking(move || req.text(&ready)).await?;
    Ok(Json(json!({ "prompt": text })))
}
