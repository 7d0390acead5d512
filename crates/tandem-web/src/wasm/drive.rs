//! The drive loop and the state it shares with the [`Engine`](super::Engine)'s methods.
use super::js_error;
use crate::lost::{device_lost_error, first, Devices, Either};
use crate::session::{Added, MemoryStats, Output, Request, Session};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use tandem_core::scheduler::RequestId;
use tandem_core::Error;
use wasm_bindgen::prelude::*;

/// What the message handler asks of the drive loop, applied in order between steps.
pub(super) enum Command {
    Add(u32, Request),
    Abort(u32),
    AbortAll,
    /// An adapter's files (PEFT's config text with its safetensors bytes, or a LoRA GGUF's
    /// bytes) to read and register under a name; then the Promise settles.
    LoadAdapter {
        name: String,
        config: Option<String>,
        weights: Vec<u8>,
        settle: Settle,
    },
    UnloadAdapter {
        name: String,
        settle: Settle,
    },
}

/// A Promise's resolve and reject, for a command that answers.
pub(super) struct Settle {
    pub(super) resolve: js_sys::Function,
    pub(super) reject: js_sys::Function,
}

impl Settle {
    fn with(self, result: tandem_core::Result<()>) {
        match result {
            Ok(()) => drop(self.resolve.call0(&JsValue::NULL)),
            Err(e) => self.reject(js_error(e)),
        }
    }

    fn reject(self, error: JsValue) {
        let _ = self.reject.call1(&JsValue::NULL, &error);
    }
}

/// One request's way back to JavaScript.
pub(super) struct Pending {
    pub(super) on_text: js_sys::Function,
    pub(super) resolve: js_sys::Function,
    pub(super) reject: js_sys::Function,
    /// `on_text` threw: the request was aborted and rejects with this when it ends.
    pub(super) error: Option<JsValue>,
}

pub(super) struct Shared {
    /// Out (owned by the drive loop) while the loop runs; gone for good after `unload()`.
    pub(super) session: RefCell<Option<Session>>,
    pub(super) inbox: RefCell<VecDeque<Command>>,
    /// Every request not yet resolved or rejected, by the worker's id.
    pub(super) pending: RefCell<HashMap<u32, Pending>>,
    pub(super) driving: Cell<bool>,
    pub(super) unloaded: Cell<bool>,
    /// The GPU devices the session runs on (none on the CPU).
    pub(super) devices: RefCell<Devices>,
    /// Set when the drive loop found a device lost and dropped the session.
    pub(super) lost: RefCell<Option<String>>,
    /// The session's memory after the last step (the drive loop owns the session meanwhile).
    pub(super) memory: Cell<MemoryStats>,
}

impl Shared {
    /// Why the engine's GPU device was lost, once it has been: nothing runs any more.
    pub(super) fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone().or_else(|| self.devices.borrow().reason())
    }

    /// The device is gone, and the session's buffers with it: every request and command the
    /// engine holds ends with the loss, and the session is dropped.
    fn lose(&self, session: Session, reason: &str) {
        *self.lost.borrow_mut() = Some(reason.to_string());
        drop(session);
        let commands: Vec<Command> = self.inbox.borrow_mut().drain(..).collect();
        for command in commands {
            match command {
                Command::LoadAdapter { settle, .. } | Command::UnloadAdapter { settle, .. } => {
                    settle.reject(device_lost_error(reason))
                }
                Command::Add(..) | Command::Abort(_) | Command::AbortAll => {}
            }
        }
        let ids: Vec<u32> = self.pending.borrow().keys().copied().collect();
        for js in ids {
            self.settle(js, Err(device_lost_error(reason)));
        }
        self.driving.set(false);
    }

    /// Takes request `js` out and settles its Promise: resolved with `usage`, or rejected with
    /// `error` (or with what its `on_text` threw).
    fn settle(&self, js: u32, result: Result<String, JsValue>) {
        let Some(p) = self.pending.borrow_mut().remove(&js) else { return };
        let _ = match p.error.map_or(result, Err) {
            Ok(usage) => p.resolve.call1(&JsValue::NULL, &JsValue::from_str(&usage)),
            Err(e) => p.reject.call1(&JsValue::NULL, &e),
        };
    }

    /// Hands `text` to request `js`'s callback; false if the callback threw (the request is to
    /// be aborted).
    fn emit(&self, js: u32, text: &str) -> bool {
        let Some(on_text) =
            self.pending.borrow().get(&js).filter(|p| p.error.is_none()).map(|p| p.on_text.clone())
        else {
            return true;
        };
        match on_text.call1(&JsValue::NULL, &JsValue::from_str(text)) {
            Ok(_) => true,
            Err(e) => {
                if let Some(p) = self.pending.borrow_mut().get_mut(&js) {
                    p.error = Some(e);
                }
                false
            }
        }
    }
}

fn usage_json(usage: &crate::Usage) -> Result<String, JsValue> {
    serde_json::to_string(usage).map_err(js_error)
}

/// The drive loop: owns the session while any request runs, applies the inbox before every
/// step, and gives the session back (or drops it, after `unload()`) when nothing is left.
pub(super) async fn drive(shared: Rc<Shared>) {
    let Some(mut session) = shared.session.borrow_mut().take() else {
        shared.driving.set(false);
        return;
    };
    let devices = shared.devices.borrow().clone();
    // The session's id of each running request -> the worker's.
    let mut ids: HashMap<RequestId, u32> = HashMap::new();
    loop {
        loop {
            let Some(command) = shared.inbox.borrow_mut().pop_front() else { break };
            match command {
                Command::Add(js, req) => match session.add(&req) {
                    Ok(Added::Queued(id)) => {
                        ids.insert(id, js);
                    }
                    Ok(Added::Done(usage)) => shared.settle(js, usage_json(&usage)),
                    Err(e) => shared.settle(js, Err(js_error(e))),
                },
                Command::Abort(js) => {
                    if let Some((&id, _)) = ids.iter().find(|(_, &j)| j == js) {
                        session.abort(id);
                    }
                }
                Command::AbortAll => session.abort_all(),
                Command::LoadAdapter { name, config, weights, settle } => settle.with(
                    session
                        .read_adapter(config.as_deref(), weights)
                        .and_then(|a| session.add_adapter(&name, a)),
                ),
                Command::UnloadAdapter { name, settle } => {
                    settle.with(session.remove_adapter(&name))
                }
            }
        }
        if !session.has_work() {
            break;
        }
        if let Some(reason) = devices.reason() {
            return shared.lose(session, &reason);
        }
        // A read on a lost device may never settle: the loss ends the step unfinished.
        let outputs = match first(session.step(), devices.lost()).await {
            Either::Left(outputs) => outputs,
            Either::Right(reason) => return shared.lose(session, &reason),
        };
        // A step that failed as a whole (its read was refused) may be the loss, not yet
        // reported.
        let step_failed = outputs.iter().any(|(_, o)| match o {
            Output::Failed(Error::Backend { backend, .. }) => backend == "step",
            Output::Failed(Error::DeviceLost { .. }) => true,
            _ => false,
        });
        if step_failed {
            if let Some(reason) = devices.loss_behind_failure().await {
                return shared.lose(session, &reason);
            }
        }
        shared.memory.set(session.memory());
        for (id, output) in outputs {
            let Some(&js) = ids.get(&id) else { continue };
            match output {
                Output::Text(text) => {
                    if !shared.emit(js, &text) {
                        session.abort(id);
                    }
                }
                Output::Done(usage) => {
                    ids.remove(&id);
                    shared.settle(js, usage_json(&usage));
                }
                Output::Failed(e) => {
                    ids.remove(&id);
                    shared.settle(js, Err(js_error(e)));
                }
            }
        }
    }
    shared.memory.set(session.memory());
    // No await since the inbox was found empty: nothing can have been queued meanwhile.
    shared.driving.set(false);
    if !shared.unloaded.get() {
        *shared.session.borrow_mut() = Some(session);
    }
}
