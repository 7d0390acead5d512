//! The engine JavaScript holds: requests in, text and usage out, through the drive loop.
use super::drive::{drive, Command, Pending, Settle, Shared};
use super::js_error;
use crate::lost::device_lost_error;
use crate::session::Request;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
pub struct Engine {
    pub(super) shared: Rc<Shared>,
    pub(super) info: String,
}

#[wasm_bindgen]
impl Engine {
    /// JSON: `{ backend: { kind, adapter, software, shader_f16, fallback_reason }, model: {...} }`.
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// Runs request `id` (the worker's, unique among those in flight; `request` is JSON, see
    /// `Request`) alongside any others, calling `on_text(piece)` for each piece of its text.
    /// Resolves to its usage as JSON; rejects with an Error.
    pub fn generate(&self, id: u32, request: String, on_text: js_sys::Function) -> js_sys::Promise {
        let shared = &self.shared;
        let req: Request = match serde_json::from_str(&request) {
            Ok(req) => req,
            Err(e) => return js_sys::Promise::reject(&js_error(format!("bad request: {e}"))),
        };
        if shared.unloaded.get() {
            return js_sys::Promise::reject(&js_error("the engine was unloaded"));
        }
        if let Some(reason) = shared.lost_reason() {
            return js_sys::Promise::reject(&device_lost_error(&reason));
        }
        if shared.pending.borrow().contains_key(&id) {
            return js_sys::Promise::reject(&js_error(format!(
                "request id {id} is already in flight"
            )));
        }
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            shared
                .pending
                .borrow_mut()
                .insert(id, Pending { on_text: on_text.clone(), resolve, reject, error: None });
        });
        self.send(Command::Add(id, req));
        promise
    }

    /// JSON: the model's memory now (see [`MemoryStats`]): weights, the KV pool's bytes in
    /// total, in use (blocks held by requests x bytes a block) and free, and activations.
    pub fn stats(&self) -> Result<String, JsValue> {
        if self.shared.unloaded.get() {
            return Err(js_error("the engine was unloaded"));
        }
        if let Some(session) = self.shared.session.borrow().as_ref() {
            self.shared.memory.set(session.memory());
        }
        serde_json::to_string(&self.shared.memory.get()).map_err(js_error)
    }

    /// Resolves with the reason (a string) when the GPU device the engine runs on is lost;
    /// never on the CPU. The engine then runs nothing more: load the model again.
    pub fn device_lost(&self) -> js_sys::Promise {
        let devices = self.shared.devices.borrow().clone();
        wasm_bindgen_futures::future_to_promise(async move {
            Ok(JsValue::from_str(&devices.lost().await))
        })
    }

    /// TESTING ONLY: destroys the engine's GPU device, as a driver reset would take it away
    /// (`device.destroy()`). An error on the CPU backend, which has no device.
    pub fn debug_lose_device(&self) -> Result<(), JsValue> {
        match self.shared.devices.borrow().destroy_for_testing() {
            true => Ok(()),
            false => Err(js_error("the engine runs on the CPU: it has no GPU device to lose")),
        }
    }

    /// Asks request `id` to stop after its current step; it then resolves with finish_reason
    /// "interrupted". The others run on. Does nothing when it is not in flight.
    pub fn abort(&self, id: u32) {
        if self.shared.pending.borrow().contains_key(&id) {
            self.send(Command::Abort(id));
        }
    }

    /// [`Engine::abort`] for every request in flight.
    pub fn interrupt(&self) {
        if self.shared.driving.get() {
            self.send(Command::AbortAll);
        }
    }

    /// Frees the model (GPU buffers included). Requests in flight are interrupted and the
    /// model freed once they have ended. Later calls to `generate` reject.
    pub fn unload(&self) {
        self.shared.unloaded.set(true);
        if self.shared.driving.get() {
            self.send(Command::AbortAll);
        } else {
            self.shared.session.borrow_mut().take();
        }
    }

    /// Speculative decoding for the requests that start from now on: `draft` (another engine,
    /// freshly loaded with the same tokenizer, which this one takes over) proposes up to
    /// `tokens` tokens a step, or without it n-gram drafting from each request's own text.
    /// The output stays this model's own.
    pub fn speculate(&self, draft: Option<Engine>, tokens: u32) -> Result<(), JsValue> {
        if self.shared.driving.get() {
            return Err(js_error("speculation can only be set while no request is in flight"));
        }
        let draft = match draft {
            Some(d) => {
                if d.shared.driving.get() {
                    return Err(js_error("the draft engine has requests in flight"));
                }
                d.shared.unloaded.set(true);
                self.shared.devices.borrow_mut().join(&d.shared.devices.borrow());
                let taken = d.shared.session.borrow_mut().take();
                Some(taken.ok_or_else(|| js_error("the draft engine was unloaded"))?)
            }
            None => None,
        };
        let mut session = self.shared.session.borrow_mut();
        let session = session.as_mut().ok_or_else(|| js_error("the engine was unloaded"))?;
        session.speculate(draft, tokens as usize).map_err(js_error)
    }

    /// Reads a LoRA adapter and registers it under `name`, between two steps (requests in
    /// flight go on): `config` is PEFT's `adapter_config.json` text with `weights` its
    /// `adapter_model.safetensors`, or without `config` `weights` is a LoRA GGUF. Requests
    /// then name it in `adapter` or `model`. Resolves once it is registered.
    pub fn load_adapter(
        &self,
        name: String,
        config: Option<String>,
        weights: &js_sys::Uint8Array,
    ) -> js_sys::Promise {
        self.answer(|settle| Command::LoadAdapter {
            name,
            config,
            weights: weights.to_vec(),
            settle,
        })
    }

    /// Unregisters adapter `name`: new requests naming it are refused; those running finish.
    pub fn unload_adapter(&self, name: String) -> js_sys::Promise {
        self.answer(|settle| Command::UnloadAdapter { name, settle })
    }

    /// A Promise settled by the drive loop when it applies the command `make` builds.
    fn answer(&self, make: impl FnOnce(Settle) -> Command) -> js_sys::Promise {
        if self.shared.unloaded.get() {
            return js_sys::Promise::reject(&js_error("the engine was unloaded"));
        }
        if let Some(reason) = self.shared.lost_reason() {
            return js_sys::Promise::reject(&device_lost_error(&reason));
        }
        let mut settle = None;
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            settle = Some(Settle { resolve, reject });
        });
        if let Some(settle) = settle {
            self.send(make(settle));
        }
        promise
    }

    /// Queues `command` for the drive loop, starting the loop if it is not running.
    fn send(&self, command: Command) {
        self.shared.inbox.borrow_mut().push_back(command);
        if !self.shared.driving.replace(true) {
            wasm_bindgen_futures::spawn_local(drive(self.shared.clone()));
        }
    }
}
