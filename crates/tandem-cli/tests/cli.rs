//! The `tandem` binary as a user meets it: output on the right streams, and every bad input a
//! clear error with a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn stories() -> Option<PathBuf> {
    tandem_testkit::shared_model("stories260K", &["model.safetensors"])
}

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().expect("run tandem")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs tandem expecting failure; returns stderr.
fn fails(args: &[&str], needle: &str) -> String {
    let out = tandem(args);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {err}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.contains("error:"), "{args:?}: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: expected {needle:?} in: {err}"
    );
    err
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of stories260K with one file replaced (or removed with `None`).
fn stories_with(name: &str, file: &str, content: Option<&[u8]>) -> Option<PathBuf> {
    let src = stories()?;
    let dir = temp_dir(name);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    match content {
        Some(bytes) => std::fs::write(dir.join(file), bytes).unwrap(),
        None => std::fs::remove_file(dir.join(file)).unwrap(),
    }
    Some(dir)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn run_streams_text_to_stdout_and_summary_to_stderr() {
    let Some(dir) = stories() else { return };
    let out = tandem(&["run", "--model", p(&dir), "--max-tokens", "40", "Once upon a time"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.split_whitespace().count() >= 5, "stdout: {stdout:?}");
    assert!(!stdout.contains("tok/s"), "stdout must carry only text: {stdout:?}");
    for field in ["prompt:", "tok/s", "generated:", "peak memory"] {
        assert!(stderr.contains(field), "summary lacks {field}: {stderr}");
    }
}

#[test]
fn empty_prompt_starts_from_bos_and_matches_reference() {
    let Some(dir) = stories() else { return };
    let out = tandem(&[
        "run",
        "--model",
        p(&dir),
        "--max-tokens",
        "200",
        "--ignore-eos",
        "--backend",
        "cpu-reference",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reference = std::fs::read_to_string(dir.join("reference_greedy.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&reference).unwrap();
    let want = reference["text"].as_str().expect("text");
    assert_eq!(text(&out.stdout).trim_end(), want.trim_end());
}

#[test]
fn inspect_reports_shapes_and_kv_bytes() {
    let Some(dir) = stories() else { return };
    let out = tandem(&["inspect", p(&dir)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("model.layers.0.mlp.down_proj.weight"), "{stdout}");
    // 2 x 5 layers x 4 kv heads x 8 head_dim x 4 bytes; q8_0 and q4_0: one block of 32 a row
    // (34 and 18 bytes); fp8: 8 bytes and a 4-byte scale a head.
    assert!(
        stdout.contains("KV cache/token: 1280 f32, 640 f16, 340 q8_0, 180 q4_0, 480 fp8 bytes"),
        "{stdout}"
    );
}

/// `tandem serve --kv-cache-memory`: the same bytes hold about twice the tokens at q8_0 as at
/// f16 and four times at q4_0 (less the scales: 640 / 340 and 640 / 180 bytes a token), as its
/// startup line says; fp8 a third more on stories260K's heads of 8 values (640 / 480: a 4-byte
/// scale a head; at SmolLM2's 64 values it is 1.9x).
#[test]
fn serve_fits_more_tokens_in_the_same_kv_memory_when_quantized() {
    use std::io::{BufRead, BufReader};
    let Some(dir) = stories() else { return };
    let mut tokens = vec![];
    for kv in ["f16", "q8_0", "q4_0", "fp8"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["serve", "--model", p(&dir), "--backend", "cpu", "--port", "0"])
            .args(["--kv-cache-memory", "1MiB", "--kv-dtype", kv])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tandem serve");
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines.map_while(|l| l.ok()).find(|l| l.contains("KV pool"));
        let _ = child.kill();
        let _ = child.wait();
        let line = line.unwrap_or_else(|| panic!("{kv}: no startup line"));
        assert!(line.contains(&format!("{kv} at ")), "{line}");
        // "KV pool N blocks (T tokens, ..."
        let t = line.split(" blocks (").nth(1).and_then(|r| r.split(' ').next());
        tokens.push(t.and_then(|t| t.parse::<f64>().ok()).unwrap_or_else(|| panic!("{line}")));
    }
    let (q8, q4, fp8) = (tokens[1] / tokens[0], tokens[2] / tokens[0], tokens[3] / tokens[0]);
    assert!((q8 - 640.0 / 340.0).abs() < 0.02 && (q4 - 640.0 / 180.0).abs() < 0.04, "{tokens:?}");
    assert!((fp8 - 640.0 / 480.0).abs() < 0.02, "{tokens:?}");
}

#[test]
fn kv_dtypes_a_model_or_backend_cannot_store_are_refused_with_the_choices() {
    // An unknown name is clap's usage error (exit 2), listing the choices.
    let out = tandem(&["run", "--kv-dtype", "q3", "hi"]);
    let err = text(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("f32, f16, q8_0, q4_0"), "{err}");
    // Rows of 2 KV heads x 8 values are not whole blocks of 32.
    let config = synthetic_config("kv16", r#"{"num_key_value_heads": 2}"#);
    let err = fails(&bench(&config, &["--kv-dtype", "q8_0"]), "q8_0");
    assert!(err.contains("32"), "{err}");
    let out = tandem(&bench(&config, &["--kv-dtype", "f16"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Values finer than keys are no pair a backend runs: the refusal lists the pairs.
    let config = synthetic_config("kv64", r#"{"num_key_value_heads": 4}"#);
    let err = fails(&bench(&config, &["--k-dtype", "q4_0", "--v-dtype", "f16"]), "q4_0/f16");
    assert!(err.contains("f16/q8_0, f16/q4_0, q8_0/q4_0"), "{err}");
    let out = tandem(&bench(&config, &["--kv-dtype", "q8_0", "--v-dtype", "q4_0"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("q8_0/q4_0"), "{}", text(&out.stdout));
}

#[test]
fn bad_inputs_are_clear_errors() {
    fails(&["run", "--model", "/nonexistent/model.gguf", "hi"], "/nonexistent/model.gguf");
    let dir = temp_dir("bad");
    let gguf = dir.join("bad.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap();
    fails(&["run", "--model", p(&gguf), "hi"], "bad.gguf");
    std::fs::write(&gguf, b"NOPE this is not a model").unwrap();
    fails(&["inspect", p(&gguf)], "bad.gguf");

    let Some(_) = stories() else { return };
    let no_tok = stories_with("notok", "tokenizer.json", None).unwrap();
    fails(&["run", "--model", p(&no_tok), "hi"], "tokenizer");
    let truncated = std::fs::read(stories().unwrap().join("model.safetensors")).unwrap();
    let dir = stories_with("trunc", "model.safetensors", Some(&truncated[..truncated.len() / 2]))
        .unwrap();
    fails(&["run", "--model", p(&dir), "hi"], "model.safetensors");
    let dir = stories_with(
        "arch",
        "config.json",
        Some(br#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#),
    )
    .unwrap();
    fails(&["run", "--model", p(&dir), "hi"], "architecture");
    let config = std::fs::read_to_string(stories().unwrap().join("config.json")).unwrap();
    let dir = stories_with(
        "shape",
        "config.json",
        Some(config.replace("\"intermediate_size\": 172", "\"intermediate_size\": 100").as_bytes()),
    )
    .unwrap();
    fails(&["run", "--model", p(&dir), "hi"], "shape");
    let dir = stories_with(
        "layers",
        "config.json",
        Some(config.replace("\"num_hidden_layers\": 5", "\"num_hidden_layers\": 6").as_bytes()),
    )
    .unwrap();
    fails(&["run", "--model", p(&dir), "hi"], "model.layers.5");
    let long = "once upon a time ".repeat(300);
    fails(&["run", "--model", p(&stories().unwrap()), &long], "context");
    fails(&["run", "--model", p(&stories().unwrap()), "--temperature=-1", "hi"], "temperature");
}

/// `--chat-template-kwargs` reaches the template as variables; what is not a JSON object, or
/// names what tandem passes itself, is refused.
#[test]
fn chat_template_kwargs_reach_the_template() {
    let out = tandem(&["run", "--chat", "--chat-template-kwargs", "[1]", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("a JSON object is needed"), "{}", text(&out.stderr));

    let Some(src) = stories() else { return };
    let config = std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["chat_template"] = "{% if shout is defined %}{{ raise_exception('shout=' ~ shout) }}{% endif %}{{ messages[0].content }}".into();
    let dir = stories_with("kwargs", "tokenizer_config.json", Some(config.to_string().as_bytes()))
        .unwrap();
    let run = |kwargs: &str| {
        let args = ["run", "--model", p(&dir), "--max-tokens", "2", "--chat"];
        tandem(&[&args[..], &["--chat-template-kwargs", kwargs, "hi"]].concat())
    };
    assert!(run("{}").status.success(), "{}", text(&run("{}").stderr));
    fails(
        &["run", "--model", p(&dir), "--chat", "--chat-template-kwargs", r#"{"shout": 7}"#, "hi"],
        "shout=7",
    );
    fails(
        &[
            "run",
            "--model",
            p(&dir),
            "--chat",
            "--chat-template-kwargs",
            r#"{"messages": []}"#,
            "hi",
        ],
        "`messages` cannot be a template keyword argument",
    );
}

#[test]
fn sampling_repeats_with_a_seed() {
    let Some(dir) = stories() else { return };
    let sample = |seed: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            p(&dir),
            "--max-tokens",
            "60",
            "--temperature",
            "0.9",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ];
        args.extend_from_slice(extra);
        args.push("Once upon a time");
        let out = tandem(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let a = sample("7", &[]);
    assert_eq!(a, sample("7", &[]), "same seed, same text");
    assert_ne!(a, sample("8", &[]), "another seed, another text");
    // The penalty path samples on the host from logits; it must be seeded the same way.
    let b = sample("7", &["--repetition-penalty", "1.3", "--top-k", "20"]);
    assert_eq!(b, sample("7", &["--repetition-penalty", "1.3", "--top-k", "20"]));
}

#[test]
fn stop_strings_end_the_output() {
    let Some(dir) = stories() else { return };
    let out = tandem(&[
        "run",
        "--model",
        p(&dir),
        "--max-tokens",
        "200",
        "--stop",
        "Lily",
        "Once upon a time",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.trim_end(), ", there was a little girl named", "{stdout:?}");
}

/// A small HF config.json (with `patch` merged in) in a fresh directory; returns its path.
fn synthetic_config(name: &str, patch: &str) -> PathBuf {
    let mut v: serde_json::Value = serde_json::from_str(
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 300,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": false}"#,
    )
    .unwrap();
    let patch: serde_json::Value = serde_json::from_str(patch).unwrap();
    for (k, x) in patch.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    let path = temp_dir(name).join("config.json");
    std::fs::write(&path, v.to_string()).unwrap();
    path
}

#[test]
fn bench_synthetic_runs_on_every_backend() {
    let config = synthetic_config("synth", "{}");
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--synthetic",
            p(&config),
            "--prompt-tokens",
            "8",
            "--decode-tokens",
            "4",
            "--repeat",
            "1",
        ];
        args.extend_from_slice(extra);
        tandem(&args)
    };
    for (backend, dtype, label) in [
        ("cpu", None, "q4_1"),
        ("cpu", Some("bf16"), "bf16"),
        ("cpu-reference", Some("q8"), "q8_0"),
        ("wgpu", Some("f16"), "f16"),
    ] {
        let mut extra = vec!["--backend", backend];
        extra.extend(dtype.iter().flat_map(|d| ["--dtype", d]));
        let out = bench(&extra);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        if backend == "wgpu" && stderr.contains("no WebGPU adapter") {
            eprintln!("SKIP bench --synthetic on wgpu: {stderr}");
            continue;
        }
        assert!(out.status.success(), "{backend} {dtype:?}: {stderr}");
        assert!(
            stdout.contains(&format!("synthetic weights ({label}, seed 0)")),
            "{backend}: {stdout}"
        );
        assert!(
            stdout
                .contains("2 layers, dim 64, 8 heads (4 kv heads, head_dim 8), ffn 172, vocab 300"),
            "{stdout}"
        );
        for field in ["weights:", "prefill:", "decode:", "GB/s of weights", "peak memory"] {
            assert!(stdout.contains(field), "{backend}: no {field} in {stdout}");
        }
    }
    // The weight bytes follow the type: q4_1 is 5 bits a weight, bf16 16.
    let bytes = |dtype: &str| {
        let out = bench(&["--backend", "cpu", "--dtype", dtype]);
        let stdout = text(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("weights:"))
            .unwrap_or_else(|| panic!("{stdout}"));
        line["weights:".len()..].split_whitespace().next().unwrap().parse::<f64>().unwrap()
    };
    // Per layer q and o [64, 64], k and v [32, 64], three FFN [172, 64]; embedding and head
    // [300, 64]; f32 norms: two per layer and the final one.
    let matrix_elems =
        2.0 * (64.0 * 64.0 * 2.0 + 32.0 * 64.0 * 2.0 + 3.0 * 172.0 * 64.0) + 2.0 * 300.0 * 64.0;
    let norm_bytes = (2.0 * 2.0 + 1.0) * 64.0 * 4.0;
    assert_eq!(bytes("bf16"), matrix_elems * 2.0 + norm_bytes);
    assert!((bytes("q4") - (matrix_elems * 5.0 / 8.0 + norm_bytes)).abs() < 64.0);
    // Rows of 64 and 172 are not whole K-quant blocks: q4k falls back to Q5_0 (24-byte blocks
    // of 32 in tandem's padded layout, 6 bits a weight), q6k to Q8_0 (8.5).
    assert_eq!(bytes("q4k"), matrix_elems * 6.0 / 8.0 + norm_bytes);
    assert_eq!(bytes("q6k"), matrix_elems * 8.5 / 8.0 + norm_bytes);
}

#[test]
fn kquant_dtypes_make_whole_blocks_and_fall_back_per_matrix() {
    // dim 256: every matrix but down_proj (rows of ffn 320) is whole blocks of 256.
    let config = synthetic_config(
        "synth-k",
        r#"{"hidden_size": 256, "intermediate_size": 320, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}"#,
    );
    let bytes = |dtype: &str| {
        let out = tandem(&bench(&config, &["--dtype", dtype]));
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{dtype}: {}", text(&out.stderr));
        let line = stdout
            .lines()
            .find(|l| l.starts_with("weights:"))
            .unwrap_or_else(|| panic!("{stdout}"));
        line["weights:".len()..].split_whitespace().next().unwrap().parse::<f64>().unwrap()
    };
    // Per layer q and o [256, 256], k and v [128, 256], gate and up [320, 256], down [256, 320];
    // embedding and head [300, 256]; f32 norms.
    let whole = 2.0 * (256.0 * 256.0 * 2.0 + 128.0 * 256.0 * 2.0 + 2.0 * 320.0 * 256.0)
        + 2.0 * 300.0 * 256.0;
    let down = 2.0 * 256.0 * 320.0;
    let norm_bytes = (2.0 * 2.0 + 1.0) * 256.0 * 4.0;
    // Q4_K: 144 bytes a block of 256 (4.5 bits); Q6_K: 212 (6.625 in tandem's padded layout).
    assert_eq!(bytes("q4k"), whole * 144.0 / 256.0 + down * 24.0 / 32.0 + norm_bytes);
    assert_eq!(bytes("q6k"), whole * 212.0 / 256.0 + down * 34.0 / 32.0 + norm_bytes);
}

#[test]
fn run_with_kquant_dtypes() {
    let Some(dir) = stories() else { return };
    for dtype in ["q4k", "q6k"] {
        let out = tandem(&[
            "run",
            "--model",
            p(&dir),
            "--dtype",
            dtype,
            "--max-tokens",
            "30",
            "Once upon a time",
        ]);
        assert!(out.status.success(), "{dtype}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.split_whitespace().count() >= 10, "{dtype}: {stdout:?}");
    }
}

/// `tandem bench --synthetic CONFIG` on the CPU with a short run, then `extra`.
fn bench<'a>(config: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "bench",
        "--synthetic",
        p(config),
        "--backend",
        "cpu",
        "--prompt-tokens",
        "8",
        "--decode-tokens",
        "4",
        "--repeat",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn bench_synthetic_bad_inputs_are_clear_errors() {
    let good = synthetic_config("synth-good", "{}");
    let missing = synthetic_config("synth-missing", r#"{"hidden_size": null}"#);
    fails(&bench(&missing, &[]), "missing hidden_size");
    fails(&bench(&missing, &[]), "config.json");
    let zero = synthetic_config("synth-zero", r#"{"num_hidden_layers": 0}"#);
    fails(&bench(&zero, &[]), "num_hidden_layers");
    // Within the config limits but terabytes of weights: refused before anything is made.
    let huge = synthetic_config(
        "synth-huge",
        r#"{"num_hidden_layers": 1000, "hidden_size": 65536, "intermediate_size": 262144, "num_attention_heads": 512, "num_key_value_heads": 512}"#,
    );
    let err = fails(&bench(&huge, &[]), "GiB");
    assert!(err.contains("1000 layers") && err.contains("more than"), "{err}");
    fails(&bench(Path::new("/nonexistent/config.json"), &[]), "/nonexistent/config.json");
    let not_json = temp_dir("synth-notjson").join("config.json");
    std::fs::write(&not_json, "not json").unwrap();
    fails(&bench(&not_json, &[]), "config.json");
    let mut both = bench(&good, &[]);
    both.extend(["--model", p(&good)]);
    fails(&both, "--synthetic");
    let short = synthetic_config("synth-short", r#"{"max_position_embeddings": 10}"#);
    fails(&bench(&short, &[]), "context");
}

/// `--verify-tokens`: a cost for a one-token step and each size asked, at each decode context,
/// in the text and the JSON report; sizes that cannot be a step are clear errors.
#[test]
fn bench_verify_tokens_times_each_step_size() {
    let config = synthetic_config("synth-verify", "{}");
    let out = tandem(&bench(&config, &["--contexts", "16,40", "--verify-tokens", "2,5", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let verify = report["verify"].as_array().expect("verify");
    let got: Vec<(u64, u64)> = verify
        .iter()
        .map(|v| (v["context"].as_u64().unwrap(), v["tokens"].as_u64().unwrap()))
        .collect();
    // Contexts are the decode starts: 16 and 40 less half of the 4 decode tokens.
    assert_eq!(got, [(14, 1), (14, 2), (14, 5), (38, 1), (38, 2), (38, 5)]);
    for v in verify {
        assert!(v["ms"].as_f64().unwrap() > 0.0, "{v}");
        let ratio = v["vs_one_token"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{v}");
        if v["tokens"] == 1 {
            assert_eq!(ratio, 1.0);
        }
    }
    let out = tandem(&bench(&config, &["--verify-tokens", "3"]));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("verify steps:   at context 8: 1 token ") && stdout.contains("; 3 tokens "),
        "{stdout}"
    );
    fails(&bench(&config, &["--verify-tokens", "0"]), "--verify-tokens");
    fails(&bench(&config, &["--verify-tokens", "100000"]), "--verify-tokens");
    fails(&bench(&config, &["--verify-tokens", "2", "--concurrency", "2"]), "--verify-tokens");
}
