//! The JavaScript face of the engine (wasm32 only). The npm package's worker (`js/worker.js`)
//! is its one caller; requests and results cross as JSON strings, text pieces as callbacks.
//!
//! A model arrives through a [`Loader`]: the backend is chosen first, then each file's bytes
//! are pushed chunk by chunk (only the chunk is copied into wasm memory) and every tensor goes
//! to the backend (a GPU buffer, on WebGPU) as soon as its bytes are in. So no model file is
//! ever one ArrayBuffer, and the weights never sit whole in wasm memory on WebGPU.
//!
//! An [`Engine`] runs every request it is given at once, batched by the one scheduler its
//! [`Session`](crate::session::Session) holds. `generate` only queues a command and returns a
//! Promise; one drive loop (a future on the worker's event loop, started when there is work
//! and ending when there is none) owns the session while it runs: it applies the queued
//! commands (adds, aborts) between steps, steps, and routes each request's text and usage to
//! its callback and Promise. The loop never holds a borrow that the message handler needs, so
//! requests and aborts that arrive while a step runs join the next one.
//!
//! A lost GPU device ends the engine: see [`crate::lost`].
mod choose;
mod drive;
mod engine;
mod loader;
mod options;

pub use engine::Engine;
pub use loader::Loader;

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen(inline_js = "
export function tandem_yield() {
    // A message through a channel is a new task without setTimeout's 4 ms clamp.
    return new Promise((resolve) => {
        const channel = new MessageChannel();
        channel.port1.onmessage = () => { channel.port1.close(); resolve(); };
        channel.port2.postMessage(null);
    });
}
")]
extern "C" {
    fn tandem_yield() -> js_sys::Promise;
}

/// Lets the event loop run one turn (pending messages, such as an interrupt, are handled).
pub(crate) async fn yield_to_event_loop() {
    let _ = JsFuture::from(tandem_yield()).await;
}

fn js_error(msg: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&msg.to_string()).into()
}
