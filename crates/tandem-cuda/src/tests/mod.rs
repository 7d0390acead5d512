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
/// paths, every KV dtype through kv_write and both attention kernels, and the small ops.
fn every_op(f: &mut Fake) -> Vec<Op> {
    let mut ops = vec![];
    for wdtype in WEIGHTS {
        let (vocab, dim) = (50, 64);
        let table = f.buf(wdtype, vocab * dim);
        let ids = f.u32s(&[3, 49, 0]);
        let out = f.buf(DType::F32, 3 * dim);
        ops.push(Op::Embed(Embed { table, dtype: wdtype, ids, out, n: 3, vocab, dim, scale: 1.0 }));
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
        // The experts' products: two tokens of two slots over three experts.
        let (k, m, experts) = (wdtype.block_elems().max(64), 5, 3);
        let (x, w) = (f.buf(DType::F32, 2 * k), f.buf(wdtype, experts * m * k));
        let (ids, out) = (f.u32s(&[2, 0, 1, 2]), f.buf(DType::F32, 4 * m));
        ops.push(Op::MoeMatmul(MoeMatmul {
            x,
            w,
            wdtype,
            ids,
            out,
            n: 2,
            slots: 2,
            k,
            m,
            experts,
            x_per_slot: false,
        }));
    }
    for kv_dtypes in tandem_core::quant::kv::KV_PAIRS {
        let (kvh, hd, bs, blocks) = (2, 64, 16, 8);
        let numel = |d| tandem_core::quant::kv::cache_numel(d, blocks * bs, kvh, hd);
        let (cache_k, cache_v) =
            (f.buf(kv_dtypes.k, numel(kv_dtypes.k)), f.buf(kv_dtypes.v, numel(kv_dtypes.v)));
        let (k, v) = (f.buf(DType::F32, 5 * kvh * hd), f.buf(DType::F32, 5 * kvh * hd));
        let slots = f.u32s(&[0, 1, 17, 40, 127]);
        ops.push(Op::KvWrite(KvWrite {
            k,
            v,
            cache_k,
            cache_v,
            kv_dtypes,
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
                kv_dtypes,
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
                window: 0,
                softcap: 0.0,
            }));
        }
    }
    let (x, w, o) =
        (f.buf(DType::F32, 3 * 100), f.buf(DType::F32, 100), f.buf(DType::F32, 3 * 100));
    ops.push(Op::RmsNorm(RmsNorm { x, weight: w, out: o, n: 3, dim: 100, eps: 1e-5 }));
    let (positions, inv_freq) = (f.u32s(&[0, 5, 9]), f.buf(DType::F32, 32));
    let xr = f.buf(DType::F32, 3 * 4 * 64);
    ops.push(Op::Rope(Rope {
        x: xr,
        positions,
        inv_freq,
        n: 3,
        heads: 4,
        head_dim: 64,
        rot_dim: 64,
        scale: 1.0,
    }));
    ops.push(Op::Swiglu(Swiglu { gate: x, up: w, out: o, len: 100 }));
    ops.push(Op::Geglu(Geglu { gate: x, up: w, out: o, len: 100 }));
    ops.push(Op::Softcap(Softcap { x: o, len: 300, cap: 30.0 }));
    // A head's rotation over the rope's rows, and runs longer than a block's threads.
    ops.push(Op::Hadamard(Hadamard { x: xr, len: 3 * 4 * 64, size: 64 }));
    let xh = f.buf(DType::F32, 3 * 2048);
    ops.push(Op::Hadamard(Hadamard { x: xh, len: 3 * 2048, size: 2048 }));
    let (ids, weights) = (f.buf(DType::U32, 3 * 2), f.buf(DType::F32, 3 * 2));
    ops.push(Op::MoeRoute(MoeRoute {
        logits: x,
        ids,
        weights,
        n: 3,
        experts: 100,
        k: 2,
        norm: true,
    }));
    ops.push(Op::MoeSum(MoeSum { y: x, weights, out: o, n: 3, slots: 2, dim: 50 }));
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
    // Rows 0 and 2 of x masked, 100 columns in 4 words each.
    let (rows, mask) = (f.u32s(&[0, 2]), f.u32s(&[u32::MAX; 8]));
    ops.push(Op::MaskLogits(MaskLogits { x, rows, mask, n: 2, x_rows: 3, width: 100 }));
    // Rows 0 and 2 of x with adapters in slots 1 and 0 of two, rank 8, in both pool dtypes.
    let slots = f.u32s(&[1, 0]);
    for dtype in [DType::F32, DType::F16] {
        let (a, b, t) =
            (f.buf(dtype, 2 * 8 * 100), f.buf(dtype, 2 * 100 * 8), f.buf(DType::F32, 16));
        let (n, n_slots, rank) = (2, 2, 8);
        ops.push(Op::LoraShrink(LoraShrink {
            x,
            a,
            dtype,
            rows,
            slots,
            t,
            n,
            x_rows: 3,
            n_slots,
            rank,
            k: 100,
        }));
        ops.push(Op::LoraExpand(LoraExpand {
            t,
            b,
            dtype,
            rows,
            slots,
            out: o,
            n,
            out_rows: 3,
            n_slots,
            rank,
            m: 100,
        }));
    }
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
    let embed = Op::Embed(Embed {
        table,
        dtype: DType::F32,
        ids,
        out,
        n: 2,
        vocab: 10,
        dim: 4,
        scale: 1.0,
    });
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
        kv_dtypes: DType::F16.into(),
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
                kv_dtypes: kv_dtype.into(),
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
                window: 0,
                softcap: 0.0,
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
    let rope = Op::Rope(Rope {
        x,
        positions: u,
        inv_freq: x,
        n: 1,
        heads: 1,
        head_dim: 3,
        rot_dim: 3,
        scale: 1.0,
    });
    assert!(f.record(&[rope]).is_err(), "odd head_dim");
    let size = ops::HADAMARD_MAX_SIZE;
    let xh_len = 2 * size;
    let xh = f.buf(DType::F32, xh_len);
    let had = |size| Op::Hadamard(Hadamard { x: xh, len: xh_len, size });
    assert!(f.record(&[had(size)]).is_ok(), "two of the longest runs");
    let e = f.record(&[had(2 * size)]).err().expect("a run past shared memory").to_string();
    assert!(e.contains("hadamard"), "{e}");
}

mod matmul;
