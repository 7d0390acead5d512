//! Every shader in shaders/ parses and validates with naga, so a broken kernel fails CI even on
//! a machine with no adapter. The directory is read at test time: a new shader is covered
//! without touching this file.

use std::path::PathBuf;

#[test]
fn every_wgsl_file_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shaders");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 11,
        "expected a shader per op in {}, found {}",
        dir.display(),
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let src = std::fs::read_to_string(path).expect("read shader");
        let module = match naga::front::wgsl::parse_str(&src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!(
                    "{}: parse: {}",
                    path.display(),
                    e.emit_to_string(&src)
                ));
                continue;
            }
        };
        let mut v = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        if let Err(e) = v.validate(&module) {
            failures.push(format!(
                "{}: validate: {}",
                path.display(),
                e.emit_to_string(&src)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
