//! Every shader module the backend compiles parses and validates with naga, so a broken kernel
//! fails CI even on a machine with no adapter; and every file in shaders/ is part of one, so a
//! new shader file is covered (or caught unused) without touching this file.

use std::path::PathBuf;

#[test]
fn every_wgsl_module_validates() {
    let modules = tandem_wgpu::shader_modules();
    assert!(modules.len() >= 11, "expected a shader per op, found {}", modules.len());
    let mut failures = Vec::new();
    for (name, src) in &modules {
        let module = match naga::front::wgsl::parse_str(src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: parse: {}", e.emit_to_string(src)));
                continue;
            }
        };
        let mut v = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        if let Err(e) = v.validate(&module) {
            failures.push(format!("{name}: validate: {}", e.emit_to_string(src)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shaders");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|x| x == "wgsl") {
            let text = std::fs::read_to_string(&path).expect("read shader");
            assert!(
                modules.iter().any(|(_, src)| src.contains(text.as_str())),
                "{} is in no shader module",
                path.display()
            );
        }
    }
}

/// The DT_* numbers the shaders switch on are `DType::kernel_code`'s: the host sets DTYPE by it.
#[test]
fn dtype_numbers_are_the_cores() {
    let consts: Vec<(String, u32)> = include_str!("../../../shaders/kquant.wgsl")
        .lines()
        .filter_map(|l| {
            let (name, value) = l.strip_prefix("const DT_")?.split_once(": u32 = ")?;
            Some((name.to_lowercase(), value.strip_suffix("u;")?.parse().ok()?))
        })
        .collect();
    let want: Vec<(String, u32)> = tandem_core::DType::ALL
        .iter()
        .filter(|d| d.is_weight())
        .filter_map(|d| Some((d.name().to_string(), d.kernel_code()?)))
        .collect();
    assert_eq!(consts, want);
}

/// The KV_* numbers attention_kv.wgsl switches on are the cache dtypes' `DType::kernel_code`.
#[test]
fn kv_dtype_numbers_are_the_cores() {
    let consts: Vec<(String, u32)> = include_str!("../../../shaders/attention_kv.wgsl")
        .lines()
        .filter_map(|l| {
            let (name, value) = l.strip_prefix("const KV_")?.split_once(": u32 = ")?;
            Some((name.to_lowercase(), value.strip_suffix("u;")?.parse().ok()?))
        })
        .collect();
    let want: Vec<(String, u32)> = tandem_core::quant::kv::KV_DTYPES
        .iter()
        .filter_map(|d| Some((d.name().to_string(), d.kernel_code()?)))
        .collect();
    assert_eq!(consts, want);
}
