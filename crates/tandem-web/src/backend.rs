//! The backend a page gets: the browser's WebGPU through wgpu, or tandem's CPU backend compiled
//! to WebAssembly when there is no WebGPU. One enum, so the engine holds one `Model` type.

use tandem_core::ops::Op;
use tandem_core::{Backend, BufId, BufInfo, DType, Result, Step};
use tandem_cpu::CpuBackend;
use tandem_wgpu::{DeviceWatch, WgpuBackend};

// One per engine, made once: boxing the larger variant would buy nothing but an indirection.
#[allow(clippy::large_enum_variant)]
pub enum WebBackend {
    Gpu(WgpuBackend),
    Cpu(CpuBackend),
}

impl WebBackend {
    /// What reports the GPU device's loss; none on the CPU, which has nothing to lose.
    pub fn watch(&self) -> Option<DeviceWatch> {
        match self {
            WebBackend::Gpu(b) => Some(b.watch()),
            WebBackend::Cpu(_) => None,
        }
    }
}

impl Backend for WebBackend {
    fn name(&self) -> String {
        match self {
            WebBackend::Gpu(b) => b.name(),
            WebBackend::Cpu(b) => b.name(),
        }
    }

    fn supports(&self, op: &Op) -> bool {
        match self {
            WebBackend::Gpu(b) => b.supports(op),
            WebBackend::Cpu(b) => b.supports(op),
        }
    }

    fn alloc(&mut self, dtype: DType, numel: usize) -> Result<BufId> {
        match self {
            WebBackend::Gpu(b) => b.alloc(dtype, numel),
            WebBackend::Cpu(b) => b.alloc(dtype, numel),
        }
    }

    fn alloc_weight(&mut self, dtype: DType, rows: usize, cols: usize) -> Result<BufId> {
        match self {
            WebBackend::Gpu(b) => b.alloc_weight(dtype, rows, cols),
            WebBackend::Cpu(b) => b.alloc_weight(dtype, rows, cols),
        }
    }

    fn write_at(&mut self, buf: BufId, offset: usize, bytes: &[u8]) -> Result<()> {
        match self {
            WebBackend::Gpu(b) => b.write_at(buf, offset, bytes),
            WebBackend::Cpu(b) => b.write_at(buf, offset, bytes),
        }
    }

    fn free(&mut self, buf: BufId) {
        match self {
            WebBackend::Gpu(b) => b.free(buf),
            WebBackend::Cpu(b) => b.free(buf),
        }
    }

    fn buffer(&self, buf: BufId) -> Option<BufInfo> {
        match self {
            WebBackend::Gpu(b) => b.buffer(buf),
            WebBackend::Cpu(b) => b.buffer(buf),
        }
    }

    fn run(&mut self, step: &Step) -> Result<()> {
        match self {
            WebBackend::Gpu(b) => b.run(step),
            WebBackend::Cpu(b) => b.run(step),
        }
    }

    async fn read(&mut self, buf: BufId, offset: usize, len: usize) -> Result<Vec<u8>> {
        match self {
            WebBackend::Gpu(b) => b.read(buf, offset, len).await,
            WebBackend::Cpu(b) => {
                // The CPU backend never waits, so a whole generation would run as one task and
                // the worker would not see an interrupt (or anything else) until the end. One
                // turn of the event loop per read (once per token) lets messages through.
                #[cfg(target_arch = "wasm32")]
                crate::wasm::yield_to_event_loop().await;
                b.read(buf, offset, len).await
            }
        }
    }

    fn allocated_bytes(&self) -> usize {
        match self {
            WebBackend::Gpu(b) => b.allocated_bytes(),
            WebBackend::Cpu(b) => b.allocated_bytes(),
        }
    }
}
