//! The CUDA backend against the CPU reference, op by op. No GPU (or no driver, or no NVRTC):
//! every test prints SKIP with the reason.

use tandem_cuda::{CudaBackend, CudaOptions};

fn make() -> Result<CudaBackend, String> {
    CudaBackend::new(CudaOptions::default()).map_err(|e| e.to_string())
}

tandem_tests::conformance_suite!(cuda, make);
