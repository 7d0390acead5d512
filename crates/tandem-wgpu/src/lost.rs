//! Device loss. A lost device (a driver reset, the GPU process restarting, `device.destroy()`)
//! never comes back: every buffer on it is gone, submissions do nothing and a pending
//! `map_async` fails (or, on some implementations, never resolves). wgpu reports the loss
//! through one callback; [`DeviceWatch`] keeps what it said and wakes whoever waits for it,
//! so a front end can stop waiting on a read that will never finish and load the model again
//! on a new device.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What the device-lost callback said, and who waits for it.
#[derive(Default)]
pub(crate) struct LostState {
    reason: Option<String>,
    wakers: Vec<Waker>,
}

pub(crate) type SharedLost = Arc<Mutex<LostState>>;

fn lock(state: &SharedLost) -> MutexGuard<'_, LostState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers the callback that records `device`'s loss in a new shared state.
pub(crate) fn watch_device(device: &wgpu::Device) -> SharedLost {
    let state = SharedLost::default();
    let s = state.clone();
    device.set_device_lost_callback(move |reason, message| {
        let reason = match reason {
            wgpu::DeviceLostReason::Destroyed => "destroyed",
            wgpu::DeviceLostReason::Unknown => "unknown",
        };
        let text = match message.trim() {
            "" => reason.to_string(),
            m => format!("{reason}: {m}"),
        };
        let wakers = {
            let mut st = lock(&s);
            st.reason.get_or_insert(text);
            std::mem::take(&mut st.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    });
    state
}

pub(crate) fn reason(state: &SharedLost) -> Option<String> {
    lock(state).reason.clone()
}

/// Watches one backend's device for loss; a clone stays usable while the backend itself is
/// busy (inside a step's read) or gone.
#[derive(Clone)]
pub struct DeviceWatch {
    pub(crate) device: wgpu::Device,
    pub(crate) state: SharedLost,
}

impl DeviceWatch {
    /// Why the device was lost ("destroyed: ..." or "unknown: ..."), once it has been.
    pub fn reason(&self) -> Option<String> {
        reason(&self.state)
    }

    /// Resolves with [`DeviceWatch::reason`] when the device is lost (never, while it works).
    pub fn lost(&self) -> Lost {
        Lost(self.state.clone())
    }

    /// TESTING ONLY: destroys the device, as a driver reset would take it away. Everything
    /// on it is lost; the loss is reported as "destroyed".
    #[doc(hidden)]
    pub fn destroy_for_testing(&self) {
        self.device.destroy();
    }
}

/// See [`DeviceWatch::lost`].
pub struct Lost(SharedLost);

impl Future for Lost {
    type Output = String;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<String> {
        let mut st = lock(&self.0);
        if let Some(r) = &st.reason {
            return Poll::Ready(r.clone());
        }
        // Polled once per wake of whatever it races with: keep one waker per task.
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
