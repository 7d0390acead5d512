//! cuBLAS, for the prompt's matrix products on tensor cores: bf16 operands, f32 sums
//! ([`tandem_core::ops::Precision::Bf16Products`]). Loaded at run time like the driver; a
//! machine without libcublas keeps the f32 tiled kernel for every product, and says so.

use cudarc::cublas::{result as blas, sys};
use cudarc::driver::sys::CUdeviceptr;
use tandem_core::Error;

use crate::device::{backend_err, Device};

/// What cuBLAS may use for scratch: set once, so it never allocates inside a graph capture.
const WORKSPACE_BYTES: usize = 32 << 20;

pub(crate) struct Blas {
    handle: sys::cublasHandle_t,
    workspace: CUdeviceptr,
}

/// out[n, m] (f32) = x[n, k] @ w[m, k]^T with x and w bf16, row-major: in cuBLAS's column-major
/// terms C[m, n] = op(A) B with A = w as a k x m matrix (transposed) and B = x as k x n.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Gemm {
    pub handle: usize,
    pub x: CUdeviceptr,
    pub w: CUdeviceptr,
    pub out: CUdeviceptr,
    pub n: i32,
    pub k: i32,
    pub m: i32,
    /// Row stride of out, in elements (m, or the full width when writing a column range).
    pub ldc: i32,
}

impl Blas {
    /// `Ok(Err(reason))` where libcublas is not found; `Err` where it is but fails to start.
    pub fn open(dev: &Device) -> Result<Result<Blas, String>, Error> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Ok(Err(
                "cuBLAS (libcublas.so.12) not found: prompt products use the f32 kernel".into(),
            ));
        }
        let handle = blas::create_handle()
            .map_err(|e| backend_err(format!("creating a cuBLAS handle: {e:?}")))?;
        let workspace = match dev.alloc_zeroed(WORKSPACE_BYTES) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created above, destroyed once.
                let _ = unsafe { blas::destroy_handle(handle) };
                return Err(e);
            }
        };
        let b = Blas { handle, workspace };
        // SAFETY: the handle is live; the stream and the workspace outlive it (the backend
        // closes it before either goes).
        let set = unsafe {
            blas::set_stream(handle, dev.cu_stream() as sys::cudaStream_t)
                .map_err(|e| backend_err(format!("cuBLAS stream: {e:?}")))
                .and_then(|()| {
                    sys::cublasSetWorkspace_v2(handle, workspace as *mut _, WORKSPACE_BYTES)
                        .result()
                        .map_err(|e| backend_err(format!("cuBLAS workspace: {e:?}")))
                })
        };
        match set {
            Ok(()) => Ok(Ok(b)),
            Err(e) => {
                b.close(dev);
                Err(e)
            }
        }
    }

    pub fn handle(&self) -> usize {
        self.handle as usize
    }

    /// Frees the handle and the workspace (the stream must be idle).
    pub fn close(self, dev: &Device) {
        // SAFETY: created in open, destroyed once; the caller synchronized the stream.
        let _ = unsafe { blas::destroy_handle(self.handle) };
        dev.free(self.workspace);
    }
}

impl Gemm {
    pub fn enqueue(&self) -> Result<(), Error> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the handle is live (the backend owns it for as long as launches exist); the
        // three buffers hold n*k, m*k bf16 and n*ldc f32 elements (checked when recorded);
        // alpha and beta are read at call time (host pointer mode).
        unsafe {
            blas::gemm_ex(
                self.handle as sys::cublasHandle_t,
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                self.m,
                self.n,
                self.k,
                &alpha as *const f32 as *const _,
                self.w as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                self.k,
                self.x as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                self.k,
                &beta as *const f32 as *const _,
                self.out as *mut _,
                sys::cudaDataType::CUDA_R_32F,
                self.ldc,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            backend_err(format!("cuBLAS GemmEx (m {} n {} k {}): {e:?}", self.m, self.n, self.k))
        })
    }
}
