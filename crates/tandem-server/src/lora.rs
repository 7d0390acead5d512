//! Loading and unloading LoRA adapters at run time, with vLLM's endpoints and fields
//! (`lora_name`, `lora_path`). A load reads a PEFT adapter directory (or llama.cpp's LoRA
//! GGUF) on this machine, so it
//! is refused unless the operator started the server with `--allow-runtime-lora`; an unload
//! answers once the adapter's queued and running requests have ended (they are not cut short).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use tandem_core::lora::Adapter;
use tokio::sync::oneshot;

use crate::engine::{Command, ModelHandle};
use crate::errors::ApiError;
use crate::routes::{blocking, read, Body};
use crate::{api, Server};

#[derive(Deserialize)]
struct LoadRequest {
    lora_name: String,
    lora_path: String,
    /// The base model it is for (the default model when absent).
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct UnloadRequest {
    lora_name: String,
}

pub(crate) async fn load(State(s): State<Arc<Server>>, body: Body) -> Result<String, ApiError> {
    if !s.config.allow_runtime_lora {
        return Err(ApiError::bad_request(
            "loading LoRA adapters at run time is off: start the server with --allow-runtime-lora",
        ));
    }
    let req: LoadRequest = api::fields(&api::parse(&read(&s, body)?)?)?;
    let name = req.lora_name.trim().to_string();
    if name.is_empty() || s.models.iter().any(|m| m.name == name) {
        return Err(ApiError::bad_param(
            "lora_name",
            format!("an adapter needs a name no model has: '{name}'"),
        ));
    }
    let (model, ready, adapter) = s.ready(req.model.as_deref())?;
    if adapter.is_some() {
        return Err(ApiError::bad_param("model", "names a LoRA adapter, not a base model"));
    }
    let config = ready
        .config
        .clone()
        .ok_or_else(|| ApiError::internal("the model's configuration is not known"))?;
    let path = PathBuf::from(req.lora_path);
    let adapter = blocking(move || {
        Adapter::open(&path, &config).map_err(|e| ApiError::bad_param("lora_path", e.to_string()))
    })
    .await?;
    let (reply, answer) = oneshot::channel();
    ask(
        &model,
        Command::LoadAdapter { name: name.clone(), adapter: Arc::new(adapter), reply },
        answer,
    )
    .await?;
    Ok(format!("Success: LoRA adapter '{name}' added successfully."))
}

pub(crate) async fn unload(State(s): State<Arc<Server>>, body: Body) -> Result<String, ApiError> {
    if !s.config.allow_runtime_lora {
        return Err(ApiError::bad_request(
            "unloading LoRA adapters at run time is off: start the server with --allow-runtime-lora",
        ));
    }
    let req: UnloadRequest = api::fields(&api::parse(&read(&s, body)?)?)?;
    let name = req.lora_name;
    let model = s
        .models
        .iter()
        .find(|m| m.adapters().contains(&name))
        .ok_or_else(|| ApiError::not_found(format!("no LoRA adapter named '{name}'")))?;
    let (reply, answer) = oneshot::channel();
    ask(model, Command::UnloadAdapter { name: name.clone(), reply }, answer).await?;
    Ok(format!("Success: LoRA adapter '{name}' removed successfully."))
}

/// Sends `command` to the model's engine and waits for its answer.
async fn ask(
    model: &ModelHandle,
    command: Command,
    answer: oneshot::Receiver<Result<(), String>>,
) -> Result<(), ApiError> {
    let stopped = || ApiError::unavailable(format!("the model '{}' has stopped", model.name));
    if !model.send(command) {
        return Err(stopped());
    }
    answer.await.map_err(|_| stopped())?.map_err(ApiError::bad_request)
}
