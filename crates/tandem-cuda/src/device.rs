//! The device side: finding a GPU without panicking, the context and its one stream, raw
//! device allocations, pinned host staging and errors in tandem's terms.
//!
//! Buffers are raw `CUdeviceptr`s rather than cudarc's `CudaSlice`: a step's kernels take
//! plain pointers (and a captured graph bakes them in), and everything runs on one stream,
//! so cudarc's per-slice event tracking would only add work per launch.

use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use tandem_core::Error;

use crate::kernels;
use crate::launch::Arch;

pub(crate) const NAME: &str = "cuda";
/// The oldest architecture the kernels are written for (warp shuffles with masks, and
/// independent thread scheduling for the __syncwarp patterns).
pub(crate) const MIN_CC: (i32, i32) = (7, 0);

pub(crate) fn backend_err(reason: impl Into<String>) -> Error {
    Error::Backend { backend: NAME.into(), reason: reason.into() }
}

/// A driver error, worded for the user: what tandem was doing, then what CUDA said.
pub(crate) fn driver_err(what: &str, e: DriverError) -> Error {
    use sys::cudaError_enum as E;
    let detail = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    let hint = match e.0 {
        E::CUDA_ERROR_NO_DEVICE => " (no CUDA-capable GPU is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES)",
        E::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH => " (the NVIDIA kernel driver and libcuda.so versions differ)",
        E::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => " (the NVIDIA driver is older than the NVRTC that compiled the kernels: update the driver or use an older NVRTC)",
        E::CUDA_ERROR_ILLEGAL_ADDRESS | E::CUDA_ERROR_LAUNCH_FAILED | E::CUDA_ERROR_ILLEGAL_INSTRUCTION | E::CUDA_ERROR_MISALIGNED_ADDRESS => {
            " (a kernel faulted: the CUDA context is unusable, restart the process)"
        }
        _ => "",
    };
    backend_err(format!("{what}: {name}: {detail}{hint}"))
}

/// An allocation failure as the user should read it.
pub(crate) fn alloc_err(bytes: usize, e: DriverError) -> Error {
    if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        let (free, total) = result::mem_get_info().unwrap_or((0, 0));
        backend_err(format!(
            "out of GPU memory: asked for {bytes} bytes with {} MiB free of {} MiB",
            free >> 20,
            total >> 20
        ))
    } else {
        driver_err(&format!("allocating {bytes} bytes"), e)
    }
}

/// Why CUDA cannot be used here, checked in the order a user would fix it. cudarc panics when
/// a library is missing, so the libraries are probed before any call into them.
pub(crate) fn probe() -> Result<(), Error> {
    // SAFETY: only tries to dlopen the library; nothing in it is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(backend_err(
            "CUDA not available: the NVIDIA driver library (libcuda.so) was not found",
        ));
    }
    kernels::nvrtc_present().map_err(|e| backend_err(format!("CUDA not available: {e}")))?;
    result::init().map_err(|e| driver_err("CUDA not available: cuInit", e))?;
    let count = result::device::get_count().map_err(|e| driver_err("counting CUDA devices", e))?;
    if count == 0 {
        return Err(backend_err("CUDA not available: the driver sees no GPU"));
    }
    Ok(())
}

pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    pub cc: (i32, i32),
    /// What NVRTC compiles for: at most the device's own architecture.
    pub arch: Arch,
}

impl Device {
    pub fn open(ordinal: usize) -> Result<Self, Error> {
        probe()?;
        let count =
            result::device::get_count().map_err(|e| driver_err("counting CUDA devices", e))?;
        if ordinal >= count as usize {
            return Err(backend_err(format!(
                "CUDA device {ordinal} does not exist ({count} present)"
            )));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| driver_err("creating the CUDA context", e))?;
        // SAFETY: tandem never uses cudarc's CudaSlice, whose cross-stream safety needs events.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let cc = ctx
            .compute_capability()
            .map_err(|e| driver_err("reading the compute capability", e))?;
        if cc < MIN_CC {
            return Err(backend_err(format!(
                "{name} is sm_{}{}: tandem's CUDA kernels need sm_{}{} (Volta) or newer",
                cc.0, cc.1, MIN_CC.0, MIN_CC.1
            )));
        }
        let picked = pick_arch(cc)?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("reading the multiprocessor count", e))?;
        let arch = Arch {
            cubin: picked == cc.0 * 10 + cc.1,
            name: format!("sm_{picked}"),
            sms: sms.max(1) as u32,
        };
        let stream = ctx.new_stream().map_err(|e| driver_err("creating a CUDA stream", e))?;
        Ok(Device { ctx, stream, name, cc, arch })
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Makes the context current on the calling thread (the backend may move between threads).
    pub fn bind(&self) -> Result<(), Error> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the CUDA context", e))
    }

    /// Waits for everything queued on the stream; a kernel fault surfaces here.
    pub fn sync(&self) -> Result<(), Error> {
        self.stream.synchronize().map_err(|e| driver_err("waiting for the GPU", e))
    }

    /// `bytes` of zeroed device memory (at least 4, so every buffer has an address).
    pub fn alloc_zeroed(&self, bytes: usize) -> Result<sys::CUdeviceptr, Error> {
        let size = bytes.max(4);
        // SAFETY: a plain allocation; the memset is ordered before any later use on the stream.
        unsafe {
            let ptr = result::malloc_sync(size).map_err(|e| alloc_err(size, e))?;
            if let Err(e) = result::memset_d8_async(ptr, 0, size, self.cu_stream()) {
                let _ = result::free_sync(ptr);
                return Err(driver_err("clearing a new buffer", e));
            }
            Ok(ptr)
        }
    }

    /// Frees after waiting for the stream, so no queued kernel still reads the memory.
    pub fn free(&self, ptr: sys::CUdeviceptr) {
        let _ = self.stream.synchronize();
        // SAFETY: `ptr` came from alloc_zeroed and the caller forgets it.
        let _ = unsafe { result::free_sync(ptr) };
    }

    /// Copies `bytes` to `dst` and waits: load-time writes from pageable memory.
    pub fn upload_sync(&self, dst: sys::CUdeviceptr, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: `dst` holds at least bytes.len() bytes (checked by the caller); the host
        // slice outlives the copy because the stream is synchronized before returning.
        unsafe { result::memcpy_htod_async(dst, bytes, self.cu_stream()) }
            .map_err(|e| driver_err("copying to the GPU", e))?;
        self.sync()
    }

    /// Bytes per second (read plus written) of a 1 GiB device-to-device copy, the median of 9
    /// after 2 warm-ups, timed with events on the stream. 1 GiB is far larger than any L2, so
    /// this is the DRAM's rate; 2 GiB are borrowed and given back.
    pub fn copy_bandwidth(&self) -> Result<f64, Error> {
        const BYTES: usize = 1 << 30;
        let a = self.alloc_zeroed(BYTES)?;
        let b = match self.alloc_zeroed(BYTES) {
            Ok(b) => b,
            Err(e) => {
                self.free(a);
                return Err(e);
            }
        };
        let s = self.cu_stream();
        let time = || -> Result<f32, Error> {
            let start = TimingEvent::new()?;
            let end = TimingEvent::new()?;
            start.record(s)?;
            // SAFETY: both buffers hold BYTES bytes and live until after the sync below.
            unsafe { result::memcpy_dtod_async(b, a, BYTES, s) }
                .map_err(|e| driver_err("copying on the GPU", e))?;
            end.record(s)?;
            self.sync()?;
            end.since(&start)
        };
        let timed: Result<Vec<f32>, Error> = (0..11).map(|_| time()).collect();
        self.free(a);
        self.free(b);
        let mut ms = timed?.split_off(2);
        ms.sort_by(f32::total_cmp);
        Ok(2.0 * BYTES as f64 / (ms[ms.len() / 2] as f64 * 1e-3))
    }

    /// Waits for the stream, then copies `out.len()` bytes from `src`.
    pub fn download_sync(&self, out: &mut [u8], src: sys::CUdeviceptr) -> Result<(), Error> {
        self.sync()?;
        // SAFETY: the caller checked the range; the stream is idle.
        unsafe { result::memcpy_dtoh_sync(out, src) }
            .map_err(|e| driver_err("copying from the GPU", e))
    }
}

/// The newest architecture NVRTC knows that the device runs: PTX for an older one is JIT-
/// compiled forward by the driver, so a GPU newer than the NVRTC still works.
fn pick_arch(cc: (i32, i32)) -> Result<i32, Error> {
    let want = cc.0 * 10 + cc.1;
    let mut n = 0;
    // SAFETY: NVRTC was found by probe(); the calls only fill the given memory.
    let supported = unsafe {
        cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut n)
            .result()
            .map_err(|e| backend_err(format!("nvrtcGetNumSupportedArchs: {e}")))?;
        let mut archs = vec![0i32; n.max(0) as usize];
        cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
            .result()
            .map_err(|e| backend_err(format!("nvrtcGetSupportedArchs: {e}")))?;
        archs
    };
    match supported.iter().copied().filter(|&a| a <= want).max() {
        Some(a) => Ok(a),
        None => Err(backend_err(format!(
            "NVRTC cannot compile for sm_{want} or anything older (it supports {supported:?})"
        ))),
    }
}

/// Page-locked host memory, so copies to and from the device are truly asynchronous.
pub(crate) struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    pub fn new(len: usize) -> Result<Self, Error> {
        let len = len.max(64);
        // SAFETY: a plain page-locked allocation, freed in Drop.
        let ptr = unsafe { result::malloc_host(len, 0) }
            .map_err(|e| driver_err(&format!("allocating {len} bytes of pinned host memory"), e))?;
        Ok(Pinned { ptr: ptr as *mut u8, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of len bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host; nothing refers to it after drop (the owner waits
        // for the copies that use it first).
        let _ = unsafe { result::free_host(self.ptr as *mut _) };
    }
}

/// An event that records time, for measuring the device (not used inside steps).
pub(crate) struct TimingEvent(sys::CUevent);

impl TimingEvent {
    pub fn new() -> Result<Self, Error> {
        result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map(TimingEvent)
            .map_err(|e| driver_err("creating a CUDA event", e))
    }

    pub fn record(&self, stream: sys::CUstream) -> Result<(), Error> {
        // SAFETY: both handles are live.
        unsafe { result::event::record(self.0, stream) }
            .map_err(|e| driver_err("recording a CUDA event", e))
    }

    /// Milliseconds from `start` to this event; both must have completed.
    pub fn since(&self, start: &TimingEvent) -> Result<f32, Error> {
        // SAFETY: both events are live and were recorded.
        unsafe { result::event::elapsed(start.0, self.0) }
            .map_err(|e| driver_err("reading a CUDA event's time", e))
    }
}

impl Drop for TimingEvent {
    fn drop(&mut self) {
        // SAFETY: created in new, destroyed once.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

/// A completion marker on the stream (no timing).
pub(crate) struct Event(sys::CUevent);

impl Event {
    pub fn new() -> Result<Self, Error> {
        result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map(Event)
            .map_err(|e| driver_err("creating a CUDA event", e))
    }

    pub fn record(&self, stream: sys::CUstream) -> Result<(), Error> {
        // SAFETY: both handles are live.
        unsafe { result::event::record(self.0, stream) }
            .map_err(|e| driver_err("recording a CUDA event", e))
    }

    /// Waits until the work before the last record is done (at once if never recorded).
    pub fn wait(&self) -> Result<(), Error> {
        // SAFETY: the event is live.
        unsafe { result::event::synchronize(self.0) }
            .map_err(|e| driver_err("waiting for the GPU", e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created in new, destroyed once.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}
