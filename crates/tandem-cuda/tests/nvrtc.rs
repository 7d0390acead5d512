//! Every kernels/*.cu compiles with NVRTC, with the backend's own options, for Ampere (sm_80)
//! and Hopper (sm_90), with no GPU needed. Without libnvrtc (e.g. LD_LIBRARY_PATH does not
//! name it) the test prints SKIP with the reason; scripts/check-kernels.sh runs it with the
//! pip-installed NVRTC and also assembles the PTX with ptxas.

use tandem_cuda::kernels::{self, KernelFile};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if let Err(why) = kernels::nvrtc_present() {
        eprintln!("SKIP every_kernel_compiles_for_sm80_and_sm90: {why}");
        return;
    }
    let (major, minor) = kernels::nvrtc_version().expect("version");
    let mut failures = vec![];
    for arch in ["sm_80", "sm_90"] {
        for file in KernelFile::ALL {
            match kernels::compile(file, &file.source(), &kernels::options(arch)) {
                Ok(ptx) => assert!(
                    ptx.contains(".entry"),
                    "{} for {arch}: PTX without a kernel",
                    file.name()
                ),
                Err(e) => failures.push(format!("{arch}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "NVRTC {major}.{minor}: {} kernel files compile for sm_80 and sm_90",
        KernelFile::ALL.len()
    );
}

#[test]
fn every_kernel_file_is_listed() {
    // A new kernels/*.cu that the backend does not know would never be compiled or checked.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("kernels/")
        .filter_map(|e| {
            e.ok()?.file_name().into_string().ok()?.strip_suffix(".cu").map(str::to_string)
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = KernelFile::ALL.iter().map(|f| f.name().to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn no_gpu_is_an_error_not_a_panic() {
    match tandem_cuda::CudaBackend::new(Default::default()) {
        Ok(b) => eprintln!("CUDA device present: {}", b.device_name()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("backend cuda: "), "{msg}");
            eprintln!("SKIP no_gpu_is_an_error_not_a_panic (no GPU, as expected here): {msg}");
        }
    }
    assert_eq!(
        tandem_cuda::available().is_ok(),
        tandem_cuda::CudaBackend::new(Default::default()).is_ok()
    );
}

#[test]
fn module_images_are_cubins_or_terminated_ptx() {
    if let Err(why) = kernels::nvrtc_present() {
        eprintln!("SKIP module_images_are_cubins_or_terminated_ptx: {why}");
        return;
    }
    // What the driver is handed: a CUBIN for the device's own architecture, else PTX text
    // with its NUL; a second call comes from the process's cache, identical.
    let cubin = kernels::module_image(KernelFile::Add, "sm_90", true).expect("cubin");
    assert!(cubin.starts_with(b"\x7fELF"), "not an ELF CUBIN");
    let ptx = kernels::module_image(KernelFile::Add, "sm_80", false).expect("ptx");
    assert_eq!(ptx.last(), Some(&0));
    assert!(std::str::from_utf8(&ptx[..ptx.len() - 1])
        .expect("PTX is text")
        .contains(".entry add("));
    assert_eq!(kernels::module_image(KernelFile::Add, "sm_90", true).unwrap(), cubin);
}
