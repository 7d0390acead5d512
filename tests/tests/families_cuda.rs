//! Every model family on an NVIDIA GPU, against transformers (see `tandem_tests::families`).
//! No GPU, driver or NVRTC: SKIP with the reason.

use tandem_cuda::{CudaBackend, CudaOptions};

tandem_tests::families_suite!(cuda, || CudaBackend::new(CudaOptions::default())
    .map_err(|e| e.to_string()));
