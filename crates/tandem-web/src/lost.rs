//! Surviving a lost GPU device in the browser (wasm32 only). A lost device (a driver reset,
//! the GPU process restarting, `device.destroy()`) takes every buffer with it, so the engine
//! on it cannot run anything again: its drive loop ends every request it holds with a
//! `DeviceLostError`, drops the session and refuses new requests. The worker (`js/worker.js`)
//! hears of the loss through `Engine.device_lost()` and loads the model again on a new device.
//!
//! Two browser details shape this: a `mapAsync` pending at the loss is rejected before the
//! device's `lost` promise resolves, so a failed step waits a moment for the loss to be
//! reported before it calls its failure an ordinary one; and a read might also never settle,
//! so every step races the loss and is dropped, unfinished, when the loss wins.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use tandem_wgpu::DeviceWatch;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen(inline_js = "
export function tandem_sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}
")]
extern "C" {
    fn tandem_sleep(ms: f64) -> js_sys::Promise;
}

/// How long a step that failed as a whole waits for a device loss to be reported. Chrome
/// reports one within milliseconds of the failed `mapAsync`; only such failures wait.
const LOSS_GRACE_MS: f64 = 2000.0;

/// The GPU devices one engine runs on: its model's, and a draft model's (each `Loader` opens a
/// device of its own). None on the CPU backend.
#[derive(Clone, Default)]
pub(crate) struct Devices(Vec<DeviceWatch>);

impl Devices {
    pub fn new(watch: Option<DeviceWatch>) -> Devices {
        Devices(watch.into_iter().collect())
    }

    pub fn join(&mut self, other: &Devices) {
        self.0.extend(other.0.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Why a device was lost, once one has been.
    pub fn reason(&self) -> Option<String> {
        self.0.iter().find_map(DeviceWatch::reason)
    }

    /// Resolves with the reason when one of the devices is lost; never without devices.
    pub async fn lost(&self) -> String {
        let mut waits: Vec<_> = self.0.iter().map(|w| Box::pin(w.lost())).collect();
        std::future::poll_fn(|cx| {
            waits
                .iter_mut()
                .find_map(|w| match w.as_mut().poll(cx) {
                    Poll::Ready(r) => Some(Poll::Ready(r)),
                    Poll::Pending => None,
                })
                .unwrap_or(Poll::Pending)
        })
        .await
    }

    /// After a step failed as a whole: the loss behind it, if one is reported within
    /// [`LOSS_GRACE_MS`].
    pub async fn loss_behind_failure(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        match first(self.lost(), JsFuture::from(tandem_sleep(LOSS_GRACE_MS))).await {
            Either::Left(reason) => Some(reason),
            Either::Right(_) => self.reason(),
        }
    }

    /// TESTING ONLY: destroys every device. False when there is none (the CPU backend).
    pub fn destroy_for_testing(&self) -> bool {
        self.0.iter().for_each(DeviceWatch::destroy_for_testing);
        !self.0.is_empty()
    }
}

pub(crate) enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Runs `a` and `b` together; the first to finish wins and the other is dropped unfinished.
pub(crate) async fn first<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(x) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(x));
        }
        Poll::Pending
    })
    .await
}

/// The error every request of an engine whose device was lost ends with. Its `name`,
/// "DeviceLostError", tells the worker to load the model again.
pub(crate) fn device_lost_error(reason: &str) -> JsValue {
    let e = js_sys::Error::new(&format!("the GPU device was lost (reason: {reason})"));
    e.set_name("DeviceLostError");
    e.into()
}
