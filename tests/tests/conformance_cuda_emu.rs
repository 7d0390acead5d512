//! The CUDA kernels without a GPU: kernels/*.cu compiled by the host C++ compiler against
//! tandem-cuda's small CUDA emulation (threads, barriers, warp shuffles, shared memory), run
//! through the CUDA backend's own recording code, against the CPU reference with the shared
//! cases and tolerances. It checks what the kernels compute and how the backend launches
//! them; not the driver side or speed (conformance_cuda does that on a GPU). No C++ compiler:
//! SKIP.

tandem_tests::conformance_suite!(cuda_emu, tandem_cuda::emu::EmuBackend::new);
