//! Choosing a backend from the command line. The engine is generic over the backend, so each
//! command hands a [`WithBackend`] to [`dispatch`], which calls it with the one chosen.

use clap::{Args, ValueEnum};
use tandem_core::{Backend, Error, Result};
use tandem_cpu::{CpuBackend, CpuMode};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// CUDA if an NVIDIA GPU works, else a GPU through WebGPU, else the CPU.
    Auto,
    /// The CPU, multithreaded.
    Cpu,
    /// The CPU's scalar reference mode: the oracle, slow.
    CpuReference,
    /// WebGPU through wgpu (Vulkan, Metal, DX12).
    Wgpu,
    /// An NVIDIA GPU through CUDA (kernels compiled at run time with NVRTC).
    Cuda,
}

#[derive(Args, Clone)]
pub struct BackendArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// CPU threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// wgpu: never use native shader-f16 (run the packed-u32 path browsers without it use).
    #[arg(long)]
    pub no_f16: bool,
}

/// A command body that runs on whichever backend was chosen. `another` makes a second
/// instance of the same backend (a draft model for speculative decoding has its own).
pub trait WithBackend {
    fn call<B: Backend>(self, backend: B, another: &dyn Fn() -> Result<B>) -> Result<()>;
}

pub fn dispatch(args: &BackendArgs, user: impl WithBackend) -> Result<()> {
    match args.backend {
        BackendKind::Auto => {
            let (user, cuda_why) = match with_cuda(user) {
                Ok(done) => return done,
                Err((user, e)) => (user, e.to_string()),
            };
            let wgpu_why = match pollster::block_on(WgpuBackend::new(wgpu_options(args))) {
                Ok(gpu) if !gpu.is_software() => {
                    eprintln!("backend: wgpu on {} ({cuda_why})", gpu.adapter_info());
                    return user
                        .call(gpu, &|| pollster::block_on(WgpuBackend::new(wgpu_options(args))));
                }
                Ok(gpu) => format!("{} is a software adapter", gpu.adapter_info()),
                Err(e) => e.to_string(),
            };
            eprintln!("backend: cpu, {} threads ({cuda_why}; {wgpu_why})", threads(args.threads));
            user.call(CpuBackend::new(CpuMode::Fast { threads: args.threads })?, &|| {
                CpuBackend::new(CpuMode::Fast { threads: args.threads })
            })
        }
        BackendKind::Cpu => user
            .call(CpuBackend::new(CpuMode::Fast { threads: args.threads })?, &|| {
                CpuBackend::new(CpuMode::Fast { threads: args.threads })
            }),
        BackendKind::CpuReference => {
            user.call(CpuBackend::new(CpuMode::Reference)?, &|| CpuBackend::new(CpuMode::Reference))
        }
        BackendKind::Wgpu => {
            let gpu = pollster::block_on(WgpuBackend::new(wgpu_options(args)))?;
            eprintln!(
                "backend: wgpu on {}{}",
                gpu.adapter_info(),
                if gpu.uses_f16() { ", shader-f16" } else { "" }
            );
            user.call(gpu, &|| pollster::block_on(WgpuBackend::new(wgpu_options(args))))
        }
        BackendKind::Cuda => with_cuda(user).unwrap_or_else(|(_, e)| Err(e)),
    }
}

/// Runs `user` on the first CUDA GPU; if CUDA cannot be used, hands `user` back with why.
#[cfg(all(feature = "cuda", target_os = "linux"))]
fn with_cuda<U: WithBackend>(user: U) -> std::result::Result<Result<()>, (U, Error)> {
    match tandem_cuda::CudaBackend::new(Default::default()) {
        Ok(gpu) => {
            eprintln!("backend: cuda on {}", gpu.device_name());
            Ok(user.call(gpu, &|| tandem_cuda::CudaBackend::new(Default::default())))
        }
        Err(e) => Err((user, e)),
    }
}

#[cfg(not(all(feature = "cuda", target_os = "linux")))]
fn with_cuda<U: WithBackend>(user: U) -> std::result::Result<Result<()>, (U, Error)> {
    let reason =
        "this tandem was built without CUDA (tandem-cli's `cuda` feature, Linux only)".into();
    Err((user, Error::Backend { backend: "cuda".into(), reason }))
}

fn wgpu_options(args: &BackendArgs) -> WgpuOptions {
    WgpuOptions { allow_f16: !args.no_f16, ..WgpuOptions::default() }
}

fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}
