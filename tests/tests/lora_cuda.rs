//! LoRA adapters on an NVIDIA GPU against PEFT (see `tandem_tests::lora`). No GPU, driver or
//! NVRTC: SKIP with the reason.

use tandem_cuda::{CudaBackend, CudaOptions};

tandem_tests::lora_suite!(cuda, || CudaBackend::new(CudaOptions::default())
    .map_err(|e| e.to_string()));
