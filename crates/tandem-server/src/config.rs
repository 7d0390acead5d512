//! The server's own settings (each model's engine settings are its loader's business).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Loopback by default: serving beyond this machine is a deliberate choice.
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// When set, every API route needs `Authorization: Bearer KEY` (not /health, /metrics).
    pub api_key: Option<String>,
    /// Most requests one model may have waiting; more are refused with 429.
    pub max_waiting: usize,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long running requests may go on after SIGINT/SIGTERM before they are aborted.
    pub shutdown_timeout: Duration,
    /// Whether clients may load and unload LoRA adapters (`/v1/load_lora_adapter`): a load
    /// names a path on this machine, so it is off unless the operator says so.
    pub allow_runtime_lora: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_waiting: 256,
            max_body_bytes: 8 << 20,
            shutdown_timeout: Duration::from_secs(30),
            allow_runtime_lora: false,
        }
    }
}
