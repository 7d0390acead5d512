//! Without a GPU: every op records launches whose kernel names, argument counts and argument
//! types match what NVRTC compiled from kernels/*.cu (parsed from the PTX), with blocks
//! within each kernel's launch bounds and shared memory within 48 KiB; every kernel entry is
//! reached by some op; the index checks turn bad ids, slots, positions, block tables and
//! sampling parameters into errors; and the launches that batch invariance and graph replay
//! rest on keep their shapes. With no libnvrtc the PTX half prints SKIP with the reason.

use std::collections::{BTreeSet, HashMap};

use tandem_core::ops::*;
use tandem_core::{BufId, BufInfo, DType, Error, Step};

use crate::buffers::{Entry, Table};
use crate::kernels::{self, KernelFile};
use crate::launch::{Arch, Arg, Launch, Recorder};
use crate::ops;

struct Fake {
    table: Table,
    next_ptr: u64,
}

impl Fake {
    fn new() -> Self {
        Fake { table: Table::default(), next_ptr: 0x7000_0000 }
    }
    fn buf(&mut self, dtype: DType, numel: usize) -> BufId {
        let bytes = dtype.storage_bytes(numel);
        let ptr = self.next_ptr;
        self.next_ptr += (bytes as u64).next_multiple_of(256).max(256);
        self.table.insert(Entry { ptr, dtype, numel, bytes, shadow: Default::default() })
    }
    fn u32s(&mut self, v: &[u32]) -> BufId {
        let id = self.buf(DType::U32, v.len());
        self.table.shadow_write(id, bytemuck::cast_slice(v));
        id
    }
    /// Checks `ops` as `Backend::execute` does, then records them (no groups).
    fn record(&self, ops: &[Op]) -> tandem_core::Result<Vec<Launch>> {
        self.record_step(&Step { ops: ops.to_vec(), ..Default::default() })
    }
    /// Checks a step's ops and groups as `Backend::execute` does, then records them.
    fn record_step(&self, step: &Step) -> tandem_core::Result<Vec<Launch>> {
        for op in &step.ops {
            let info = |b| self.table.get(b).map(|e| BufInfo { dtype: e.dtype, numel: e.numel });
            tandem_core::check_op(op, info)?;
            if !crate::supports(op) {
                return Err(Error::Unsupported { backend: "cuda".into(), op: op.name().into() });
            }
        }
        let (mut out, mut written) = (Vec::new(), Vec::new());
        let mut r = Recorder {
            table: &self.table,
            modules: None,
            arch: &Arch { name: "sm_80".into(), cubin: true, sms: 4 },
            out: &mut out,
            scratch: 0x2000,
            // A stand-in handle, so prompt-sized products record the tensor-core path.
            blas: Some(1),
            written_u32: &mut written,
        };
        tandem_core::backend::check_groups(step)?;
        ops::record_all(&mut r, &step.ops, &step.groups)?;
        Ok(out)
    }
}

const WEIGHTS: [DType; 14] = [
    DType::F32,
    DType::F16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q2_K,
    DType::Q3_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
];

/// Ops reaching every kernel entry: each weight dtype through embed and the three matmul
/// paths, both KV dtypes through kv_write and both attention kernels, and the small ops.
fn every_op(f: &mut Fake) -> Vec<Op> {
    let mut ops = vec![];
    for wdtype in WEIGHTS {
        let (vocab, dim) = (50, 64);
        let table = f.buf(wdtype, vocab * dim);
        let ids = f.u32s(&[3, 49, 0]);
        let out = f.buf(DType::F32, 3 * dim);
        ops.push(Op::Embed(Embed { table, dtype: wdtype, ids, out, n: 3, vocab, dim }));
        // (n, decode rows, k, m, bias): the one-token kernel, the warp-per-row kernels for
        // decode rows too long for it or not in whole blocks, the tiled kernel and the tensor
        // cores for prompt rows, and both classes in one op.
        let shapes = [
            (1, 1, 64, 33, false),
            (2, 2, 32 * 513, 3, false),
            (3, 3, 37, 5, true),
            (20, 0, 100, 70, true),
            (20, 5, 64, 70, true),
        ];
        for (n, decode_rows, k, m, bias) in shapes {
            let x = f.buf(DType::F32, n * k);
            let w = f.buf(wdtype, m * k);
            let bias = bias.then(|| f.buf(DType::F32, m));
            let out = f.buf(DType::F32, n * m);
            ops.push(Op::Matmul(Matmul { x, w, wdtype, bias, out, n, k, m, decode_rows }));
        }
    }
    for kv_dtype in [DType::F32, DType::F16] {
        let (kvh, hd, bs, blocks) = (2, 64, 16, 8);
        let cache_k = f.buf(kv_dtype, blocks * bs * kvh * hd);
        let cache_v = f.buf(kv_dtype, blocks * bs * kvh * hd);
        let (k, v) = (f.buf(DType::F32, 5 * kvh * hd), f.buf(DType::F32, 5 * kvh * hd));
        let slots = f.u32s(&[0, 1, 17, 40, 127]);
        ops.push(Op::KvWrite(KvWrite {
            k,
            v,
            cache_k,
            cache_v,
            kv_dtype,
            slots,
            n: 5,
            kv_heads: kvh,
            head_dim: hd,
        }));
        // Two decodes, then a prompt chunk of 4 at positions 33..37 sharing the first's table.
        let tables = f.u32s(&[3, 0, 7, 5, 1, 6, 2]);
        let positions = f.u32s(&[69, 20, 33, 34, 35, 36]);
        let table_starts = f.u32s(&[0, 5, 0, 0, 0, 0]);
        for (n, decode_rows) in [(2, 2), (6, 2)] {
            let q = f.buf(DType::F32, n * 8 * hd);
            let out = f.buf(DType::F32, n * 8 * hd);
            ops.push(Op::Attention(Attention {
                q,
                cache_k,
                cache_v,
                kv_dtype,
                positions,
                table_starts,
                tables,
                tables_len: 7,
                out,
                n,
                decode_rows,
                max_ctx: 70,
                heads: 8,
                kv_heads: kvh,
                head_dim: hd,
                block_size: bs,
                scale: 0.125,
            }));
        }
    }
    let (x, w, o) =
        (f.buf(DType::F32, 3 * 100), f.buf(DType::F32, 100), f.buf(DType::F32, 3 * 100));
    ops.push(Op::RmsNorm(RmsNorm { x, weight: w, out: o, n: 3, dim: 100, eps: 1e-5 }));
    let (positions, inv_freq) = (f.u32s(&[0, 5, 9]), f.buf(DType::F32, 32));
    let xr = f.buf(DType::F32, 3 * 4 * 64);
    ops.push(Op::Rope(Rope { x: xr, positions, inv_freq, n: 3, heads: 4, head_dim: 64 }));
    ops.push(Op::Swiglu(Swiglu { gate: x, up: w, out: o, len: 100 }));
    ops.push(Op::Add(Add { x: o, y: x, len: 300 }));
    ops.push(Op::CopyRows(CopyRows {
        src: x,
        dst: o,
        src_row: 1,
        dst_row: 1,
        n_rows: 2,
        width: 100,
    }));
    let tok = f.buf(DType::U32, 3);
    ops.push(Op::Argmax(Argmax { x, out: tok, n: 3, width: 100 }));
    let row = SampleRow { temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.05, uniform: 0.3 };
    let params = f.u32s(&SampleRow::to_words(&[row, SampleRow::greedy(), row]));
    ops.push(Op::Sample(Sample { x, params, out: tok, n: 3, width: 100 }));
    ops
}

/// A PTX entry's parameter types (".u64", ".u32", ".f32") and its .maxntid bound.
struct PtxEntry {
    params: Vec<String>,
    max_threads: Option<u32>,
}

fn parse_ptx(ptx: &str) -> HashMap<String, PtxEntry> {
    let mut out = HashMap::new();
    for part in ptx.split(".entry ").skip(1) {
        let name = part[..part.find('(').expect("(")].trim().to_string();
        let close = part.find(')').expect(")");
        let params = part[part.find('(').unwrap() + 1..close]
            .split(',')
            .filter_map(|p| {
                p.split_whitespace().skip_while(|t| *t != ".param").nth(1).map(str::to_string)
            })
            .collect();
        let head = &part[close..part.find('{').unwrap_or(part.len())];
        let max_threads = head.find(".maxntid").map(|i| {
            let nums: Vec<u32> = head[i + 8..]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .take(3)
                .map(|s| s.parse().unwrap())
                .collect();
            nums.iter().product()
        });
        out.insert(name, PtxEntry { params, max_threads });
    }
    out
}

fn arg_type(a: &Arg) -> &'static str {
    match a {
        Arg::Ptr(_) | Arg::U64(_) => ".u64",
        Arg::U32(_) => ".u32",
        Arg::F32(_) => ".f32",
    }
}

#[test]
fn launches_match_the_compiled_kernels() {
    let mut f = Fake::new();
    let ops = every_op(&mut f);
    let launches = f.record(&ops).expect("every op records");
    let gemms = launches.iter().filter(|l| l.gemm.is_some()).count();
    assert!(gemms >= 3, "the quantized prompt products go to cuBLAS ({gemms} products)");
    let launches: Vec<_> = launches.into_iter().filter(|l| l.gemm.is_none()).collect();
    for l in &launches {
        assert!(
            l.block >= 32 && l.block <= 1024 && l.block % 32 == 0,
            "{}: block {}",
            l.entry,
            l.block
        );
        assert!(l.smem <= 48 * 1024, "{}: {} bytes of shared memory", l.entry, l.smem);
    }
    if let Err(why) = kernels::nvrtc_present() {
        eprintln!("SKIP launches_match_the_compiled_kernels (PTX half): {why}");
        return;
    }
    let mut entries = HashMap::new();
    for file in KernelFile::ALL {
        let ptx = kernels::compile(file, &file.source(), &kernels::options("sm_80"))
            .unwrap_or_else(|e| panic!("{e}"));
        entries.insert(file, parse_ptx(&ptx));
    }
    let mut used = BTreeSet::new();
    for l in &launches {
        let e = entries[&l.file]
            .get(l.entry)
            .unwrap_or_else(|| panic!("no kernel {} in kernels/{}.cu", l.entry, l.file.name()));
        let got: Vec<&str> = l.args[..l.nargs].iter().map(arg_type).collect();
        assert_eq!(got, e.params, "arguments of {}", l.entry);
        if let Some(max) = e.max_threads {
            assert!(l.block <= max, "{}: block {} over its launch bound {max}", l.entry, l.block);
        }
        used.insert((l.file.name(), l.entry.to_string()));
        // Each f16 weight kernel's bf16 twin takes the same arguments (the op code picks one
        // by dtype, so the two must stay interchangeable).
        if let Some(stem) = l.entry.strip_suffix("_f16").filter(|_| {
            l.file != KernelFile::AttentionPrefill
                && l.file != KernelFile::AttentionDecode
                && l.file != KernelFile::KvWrite
        }) {
            let twin = format!("{stem}_bf16");
            let t = entries[&l.file]
                .get(&twin)
                .unwrap_or_else(|| panic!("no {twin} beside {}", l.entry));
            assert_eq!(t.params, e.params, "arguments of {twin}");
            used.insert((l.file.name(), twin));
        }
    }
    for (file, es) in &entries {
        for name in es.keys() {
            assert!(
                used.contains(&(file.name(), name.clone())),
                "no op reaches kernel {name} of kernels/{}.cu",
                file.name()
            );
        }
    }
    let bf16 = used.iter().filter(|(_, e)| e.ends_with("_bf16")).count();
    assert!(bf16 >= 5, "bf16 twins of embed and the four matmul kernels");
    eprintln!(
        "{} launches over {} kernel entries match their PTX signatures",
        launches.len(),
        used.len()
    );
}

#[test]
fn bad_indices_and_shapes_are_errors() {
    let mut f = Fake::new();
    let table = f.buf(DType::F32, 10 * 4);
    let ids = f.u32s(&[2, 10]);
    let out = f.buf(DType::F32, 8);
    let embed = Op::Embed(Embed { table, dtype: DType::F32, ids, out, n: 2, vocab: 10, dim: 4 });
    let e = f.record(&[embed]).err().expect("id 10 of a 10-row table").to_string();
    assert!(e.contains("ids[1] = 10"), "{e}");

    let cache = f.buf(DType::F16, 4 * 8); // 4 rows of 8, or 2 blocks of 2 rows
    let cache_v = f.buf(DType::F16, 4 * 8);
    let (k, v) = (f.buf(DType::F32, 8), f.buf(DType::F32, 8));
    let slots = f.u32s(&[4]);
    let kv = Op::KvWrite(KvWrite {
        k,
        v,
        cache_k: cache,
        cache_v,
        kv_dtype: DType::F16,
        slots,
        n: 1,
        kv_heads: 1,
        head_dim: 8,
    });
    let e = f.record(&[kv]).err().expect("slot 4 of 4 rows").to_string();
    assert!(e.contains("slots[0] = 4"), "{e}");

    // Two queries over one 2-block table of 2-row blocks.
    let tables = f.u32s(&[1, 9]);
    let (q, att_out) = (f.buf(DType::F32, 16), f.buf(DType::F32, 16));
    let att =
        |positions: &[u32], max_ctx: usize, head_dim: usize, kv_dtype: DType, f: &mut Fake| {
            let n = positions.len();
            let (positions, table_starts) = (f.u32s(positions), f.u32s(&vec![0; n]));
            Op::Attention(Attention {
                q,
                cache_k: cache,
                cache_v,
                kv_dtype,
                positions,
                table_starts,
                tables,
                tables_len: 2,
                out: att_out,
                n,
                decode_rows: 1,
                max_ctx,
                heads: 1,
                kv_heads: 1,
                head_dim,
                block_size: 2,
                scale: 1.0,
            })
        };
    let op = att(&[2], 3, 8, DType::F16, &mut f);
    let e = f.record(&[op]).err().expect("block 9 of 4").to_string();
    assert!(e.contains("tables[1] = 9"), "{e}");
    let op = att(&[1], 3, 8, DType::F16, &mut f);
    assert!(f.record(&[op]).is_ok(), "only the table's first entry is in the context");
    let op = att(&[1, 0], 3, 4, DType::F16, &mut f);
    assert!(f.record(&[op]).is_ok(), "a decode and a prompt row");
    let op = att(&[1, 3], 3, 4, DType::F16, &mut f);
    assert!(f.record(&[op]).is_err(), "a position at max_ctx");
    let op = att(&[1, 4], 9, 4, DType::F16, &mut f);
    assert!(f.record(&[op]).is_err(), "a table longer than tables_len");
    let op = att(&[1], 3, 8, DType::F32, &mut f);
    assert!(f.record(&[op]).is_err(), "an f16 cache read as f32");

    let (x, w, o) = (f.buf(DType::F32, 4), f.buf(DType::Q4_0, 32), f.buf(DType::F32, 8));
    let mm = |n, decode_rows| {
        Op::Matmul(Matmul {
            x,
            w,
            wdtype: DType::Q4_0,
            bias: None,
            out: o,
            n,
            k: 4,
            m: 8,
            decode_rows,
        })
    };
    assert!(f.record(&[mm(1, 1)]).is_ok());
    assert!(f.record(&[mm(1, 2)]).is_err(), "more decode rows than rows");
    let mm = Op::Matmul(Matmul {
        x,
        w,
        wdtype: DType::Q4_0,
        bias: None,
        out: x,
        n: 1,
        k: 4,
        m: 9,
        decode_rows: 1,
    });
    assert!(f.record(&[mm]).is_err(), "a weight smaller than m * k");
    let u = f.buf(DType::U32, 2);
    let mut sample = |rows: &[SampleRow]| {
        let params = f.u32s(&SampleRow::to_words(rows));
        let op = Op::Sample(Sample { x, params, out: u, n: rows.len(), width: 2 });
        f.record(&[op])
    };
    let row = SampleRow { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.5 };
    assert!(sample(&[row, SampleRow::greedy()]).is_ok(), "temperature 0 is greedy");
    assert!(
        sample(&[row, SampleRow { uniform: 1.0, ..row }]).is_err(),
        "uniform 1 in the second row"
    );
    assert!(sample(&[SampleRow { temperature: f32::NAN, ..row }]).is_err(), "a NaN temperature");
    let rope = Op::Rope(Rope { x, positions: u, inv_freq: x, n: 1, heads: 1, head_dim: 3 });
    assert!(f.record(&[rope]).is_err(), "odd head_dim");
}

#[test]
fn decode_grid_covers_every_row_of_its_bucket() {
    use ops::{decode_grid, part_len};
    for max_ctx in [
        1usize,
        31,
        32,
        33,
        100,
        4096,
        8191,
        8192,
        8193,
        20000,
        70000,
        1 << 21,
        (1 << 21) + 1,
        5_000_000,
    ] {
        let (part_max, parts) = decode_grid(max_ctx);
        let cap = max_ctx.next_power_of_two();
        // Every context up to the bucket's top fits the grid and the shared memory.
        let step = (cap / 4096).max(1);
        let most =
            (1..=cap).step_by(step).chain([cap]).map(|c| c.div_ceil(part_len(c))).max().unwrap();
        assert_eq!(parts, most, "max_ctx {max_ctx}");
        assert!((1..=cap).step_by(step).all(|c| part_len(c) <= part_max), "max_ctx {max_ctx}");
        // The launch stays the same while max_ctx grows within its power-of-two bucket.
        assert_eq!(decode_grid(cap), (part_max, parts));
    }
    assert_eq!(decode_grid(2048), (32, 64), "2048 positions in 64 partitions of 32");
    assert_eq!(decode_grid(8193), (64, 256), "long contexts: longer partitions, about 256");
}

/// The launches of a matmul of `n` rows, `decode_rows` of them decodes, with buffers of its own.
fn matmul(
    f: &mut Fake,
    wdtype: DType,
    n: usize,
    decode_rows: usize,
    k: usize,
    m: usize,
) -> Vec<Launch> {
    let (x, w, bias, out) = (
        f.buf(DType::F32, n * k),
        f.buf(wdtype, m * k),
        f.buf(DType::F32, m),
        f.buf(DType::F32, n * m),
    );
    f.record(&[Op::Matmul(Matmul { x, w, wdtype, bias: Some(bias), out, n, k, m, decode_rows })])
        .unwrap()
}

#[test]
fn a_rows_kernel_follows_its_class_not_n() {
    let mut f = Fake::new();
    for wdtype in [DType::F32, DType::Q4_0, DType::BF16] {
        for (k, m) in [(256, 96), (100, 37), (32 * 600, 5)] {
            // Each decode row: the same kernel and block as a one-row product's (n1 and nt run
            // one per-token arithmetic, matvec_nt), its token or tile of 8 on y.
            let family = |e: &str| e.replace("_nt_", "_n1_");
            let alone = matmul(&mut f, wdtype, 1, 1, k, m);
            for (n, dr) in [(5, 5), (30, 20), (2, 1)] {
                let l = matmul(&mut f, wdtype, n, dr, k, m);
                assert_eq!(
                    (family(l[0].entry), l[0].block),
                    (family(alone[0].entry), alone[0].block),
                    "{wdtype} k={k} n={n}"
                );
                let tokens = if l[0].entry.contains("_n1_") { dr } else { dr.div_ceil(8) };
                assert_eq!(l[0].grid.1 as usize, tokens);
            }
            // Prompt rows: the same launches' kinds whatever their count, one row included.
            let kinds = |l: &[Launch]| {
                l.iter()
                    .skip_while(|l| l.entry.starts_with("matmul_decode"))
                    .map(|l| (l.entry, l.block))
                    .collect::<BTreeSet<_>>()
            };
            let one = kinds(&matmul(&mut f, wdtype, 1, 0, k, m));
            for (n, dr) in [(300, 0), (9, 1), (130, 2)] {
                assert_eq!(
                    kinds(&matmul(&mut f, wdtype, n, dr, k, m)),
                    one,
                    "{wdtype} k={k} n={n}"
                );
            }
        }
    }
}

#[test]
fn products_over_one_x_share_their_decode_launch() {
    // q, k and v (gate and up) read the same x, a group the model records: their decode rows
    // are one n1/nt launch whose segments are the three weights; their prompt rows stay each
    // their own.
    let mut f = Fake::new();
    let (k, n) = (256, 6);
    let x = f.buf(DType::F32, n * k);
    let product = |f: &mut Fake, x, m, decode_rows, wdtype| {
        let (w, out) = (f.buf(wdtype, m * k), f.buf(DType::F32, n * m));
        Matmul { x, w, wdtype, bias: None, out, n, k, m, decode_rows }
    };
    let q4 = DType::Q4_1;
    let grouped = |ops: Vec<Matmul>| {
        let mut s = Step::default();
        s.group(ops).unwrap();
        s
    };
    let qkv = [
        product(&mut f, x, 64, n, q4),
        product(&mut f, x, 32, n, q4),
        product(&mut f, x, 32, n, q4),
    ];
    let l = f.record_step(&grouped(qkv.to_vec())).unwrap();
    assert_eq!(l.len(), 1, "one launch for three products");
    assert_eq!(l[0].entry, "matmul_decode_nt_q4_1");
    let m_args: Vec<u64> = [6, 12, 18].iter().map(|&i| l[0].args[i].bits()).collect();
    assert_eq!(m_args, [64, 32, 32], "each segment's rows");
    // The same products not recorded as a group: each its own launch.
    assert_eq!(f.record(&qkv.map(Op::Matmul)).unwrap().len(), 3);
    // A group of four: three in one launch (the kernel's most), the fourth alone.
    let four: Vec<Matmul> = (0..4).map(|_| product(&mut f, x, 32, n, q4)).collect();
    assert_eq!(f.record_step(&grouped(four)).unwrap().len(), 2);
    // Another weight type starts another launch.
    let mixed = vec![product(&mut f, x, 64, n, q4), product(&mut f, x, 32, n, DType::Q8_0)];
    assert_eq!(f.record_step(&grouped(mixed)).unwrap().len(), 2);
    // A group with another x, or an output that is the shared x, is refused by the engine,
    // and so is a step carrying one anyway.
    let y = f.buf(DType::F32, n * k);
    let apart = [product(&mut f, x, 64, n, q4), product(&mut f, y, 32, n, q4)];
    assert!(Step::default().group(apart.clone()).is_err());
    let mut forged = Step { ops: apart.map(Op::Matmul).to_vec(), ..Default::default() };
    forged.groups.push(0..2);
    assert!(f.record_step(&forged).is_err());
    let writes_x = Matmul { out: x, ..product(&mut f, x, 32, n, q4) };
    assert!(Step::default().group([product(&mut f, x, 64, n, q4), writes_x]).is_err());
    // With prompt rows: the decode rows still share a launch, the prompt rows do not.
    let mixed = vec![product(&mut f, x, 64, 2, q4), product(&mut f, x, 32, 2, q4)];
    let l = f.record_step(&grouped(mixed)).unwrap();
    assert_eq!(l.iter().filter(|l| l.entry.starts_with("matmul_decode")).count(), 1);
}

#[test]
fn tensor_core_products_have_one_shape_per_weight() {
    // cuBLAS picks its kernel from the product's shape and its operands' alignment, so every
    // product of one weight must be the same whatever the rows: n, k, m, ldc, and the operands
    // in scratch at the same offsets (the activations by whole chunks).
    let mut f = Fake::new();
    use ops::TC_ROWS;
    for (k, m) in [(64, 70), (4096, 300)] {
        let mut seen = None;
        for (n, dr) in [(1, 0), (7, 3), (TC_ROWS + 1, 0), (2 * TC_ROWS + 44, 44)] {
            let l = matmul(&mut f, DType::Q8_0, n, dr, k, m);
            let gemms: Vec<_> = l.iter().filter_map(|l| l.gemm).collect();
            assert_eq!(
                gemms.len(),
                (n - dr).div_ceil(TC_ROWS),
                "a product per chunk of TC_ROWS rows"
            );
            for (c, g) in gemms.iter().enumerate() {
                let x0 = g.x - (c * TC_ROWS * k * 2) as u64;
                let shape = (g.n, g.k, g.m, g.ldc, g.w, g.out, x0);
                assert_eq!(*seen.get_or_insert(shape), shape, "k={k} m={m} n={n}");
            }
        }
    }
}

#[test]
fn decode_steps_repeat_their_launches_as_contexts_grow() {
    // A graph replays recorded launches: a decode step's must not change while the contexts
    // grow within max_ctx's power-of-two bucket (positions and tables are uploaded data).
    let mut f = Fake::new();
    let (cache, q) = (f.buf(DType::F16, 64 * 16 * 2 * 64), f.buf(DType::F32, 3 * 8 * 64));
    let out = f.buf(DType::F32, 3 * 8 * 64);
    let (positions, table_starts, tables) = (f.u32s(&[0; 3]), f.u32s(&[0; 3]), f.u32s(&[0; 64]));
    let step = |max_ctx| {
        let op = Attention {
            q,
            cache_k: cache,
            cache_v: cache,
            kv_dtype: DType::F16,
            positions,
            table_starts,
            tables,
            tables_len: 64,
            out,
            n: 3,
            decode_rows: 3,
            max_ctx,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            block_size: 16,
            scale: 0.125,
        };
        f.record(&[Op::Attention(op)]).unwrap()
    };
    assert!(step(300) == step(512), "one bucket");
    assert!(step(512) != step(513), "the next bucket");
}

#[test]
fn decode_steps_are_captured_on_first_sight() {
    let mut f = Fake::new();
    let ops = every_op(&mut f);
    assert!(!crate::graph::decode_step(&ops), "prompt rows among them");
    let decodes: Vec<Op> = ops
        .into_iter()
        .filter(|op| match op {
            Op::Matmul(m) => m.decode_rows == m.n,
            Op::Attention(a) => a.decode_rows == a.n,
            _ => true,
        })
        .collect();
    assert!(crate::graph::decode_step(&decodes));
    assert!(!crate::graph::decode_step(&decodes[..1]), "an embedding alone");
}
