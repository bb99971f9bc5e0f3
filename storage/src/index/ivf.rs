//! IVF-PQ: a coarse k-means quantizer (inverted lists) with product-quantized residuals,
//! stored in one write-once, memory-mapped file per sealed segment.
//!
//! File `ivfpq.bin` (every section starts 64-byte aligned; zero padding between):
//!
//! | section | content |
//! |---|---|
//! | header (64 B) | `b"QIVF"`, u32 version, u32 metric (0 cosine, 1 l2, 2 dot), u32 dim, u32 nlist, u32 m, u64 rows, u64 seed, u32 bits (version 2; version 1 files are 8-bit) |
//! | centroids | `nlist × dim` f32 |
//! | codebooks | `m × 2^bits × (dim/m)` f32 |
//! | offsets | `nlist + 1` u64: list `l` holds entries `offsets[l]..offsets[l+1]` |
//! | rows | u32 segment row of each entry, list-major |
//! | codes | 8-bit: `m` bytes per entry, list-major, beside the rows. 4-bit: each list packed into [`fastscan`] blocks of 32 entries (the last one padded), lists one after another |
//! | l2 terms (l2, version 3) | `rows` f32, list-major: entry `i` of list `l` holds `‖r̂‖² + 2·(c_l − μ)·r̂` for its decoded residual `r̂` |
//! | l2 shift (l2, version 3) | `dim` f32: `μ`, the mean of the indexed vectors |
//! | l2 list minima (l2, version 3) | `nlist` f32: the smallest term of each list (+∞ if empty) |
//! | trailer | u32 CRC32 of everything before it |
//!
//! Written to a temp name, fsynced, then calibrated (see [`calibrate`]; the calibration file
//! is written first) and renamed: the index is complete or absent. Opening verifies the CRC of
//! both files, so a damaged index is reported (and rebuilt) instead of returning wrong
//! results.
//!
//! Search: the `nprobe` lists whose centroids are closest to the query are scanned with an
//! ADC table, and one table per query serves every list. For cosine and dot,
//! `q·x = q·c + q·r`. For l2, `‖q − c − r‖² = ‖q − c‖² + t(r) − 2·(q − μ)·r`, where the
//! per-entry term `t(r) = ‖r‖² + 2·(c − μ)·r` is computed once at build time and stored beside
//! the codes (4 bytes per vector). That replaces a full `m × 2^bits` table per probed list
//! (which, at 784-d with `m = 392`, cost more than scanning the list) with one addition per
//! scanned entry. Shifting the query by the data's mean `μ` keeps the table's range (and so
//! the 4-bit table's quantisation step) that of a centred query. Files of versions 1 and 2
//! carry no terms: they are computed from the codes when such a file is opened. With 4-bit
//! codes the table is quantised to bytes and 32 entries are scored per SIMD step. The best
//! `n_candidates` are returned for exact re-ranking by the caller.
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;

use fs_err as fs;
use rayon::prelude::*;

use crate::distance::{TopK, dot};
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;
use crate::index::calibrate::{self, Calibration, Served};
use crate::index::coarse::{self, HalfTable};
use crate::index::fastscan::{self, QuantizedLut};
use crate::index::kmeans::{self, KMeansParams};
use crate::index::pq::{self, ProductQuantizer};
use crate::mmap::MappedFile;
use crate::rng::SplitMix64;
use crate::types::Metric;

const MAGIC: &[u8; 4] = b"QIVF";
const VERSION: u32 = 3;
const ALIGN: usize = 64;
/// File name inside a segment directory.
pub const FILE_NAME: &str = "ivfpq.bin";

/// Build parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IvfPqParams {
    /// Inverted lists.
    pub nlist: usize,
    /// PQ sub-spaces.
    pub m: usize,
    /// Bits per sub-space code: 8 (256 centroids, ADC) or 4 (16 centroids, fast-scan).
    pub bits: u32,
    /// Training seed.
    pub seed: u64,
}

/// Queries from which [`IvfPqIndex::search_many`] probes with one matrix product.
pub const BATCH_PROBE_MIN: usize = 4;

/// Most coarse lists an index may have.
pub const MAX_NLIST: usize = 65_536;
/// Fewest training rows per list: an explicit nlist above rows / this is lowered.
pub const MIN_ROWS_PER_LIST: usize = 39;

impl IvfPqParams {
    /// Defaults from the data: nlist ≈ 4·√N, m from [`pq::default_m`] (8-bit) or
    /// [`pq::default_m4`] (4-bit); explicit values win.
    pub fn for_data(
        rows: usize,
        dim: usize,
        nlist: Option<usize>,
        m: Option<usize>,
        bits: u32,
    ) -> IvfPqParams {
        let nlist = nlist
            .unwrap_or_else(|| ((4.0 * (rows as f64).sqrt()).round() as usize).clamp(1, MAX_NLIST))
            // k-means needs ~39 training rows per centroid (FAISS warns below that); more lists
            // than that only costs memory and time.
            .clamp(1, (rows / MIN_ROWS_PER_LIST).max(1));
        IvfPqParams {
            nlist,
            m: m.unwrap_or_else(|| {
                if bits == 4 {
                    pq::default_m4(dim)
                } else {
                    pq::default_m(dim)
                }
            }),
            bits,
            seed: 0x5157_4956,
        }
    }
}

fn metric_code(m: Metric) -> u32 {
    match m {
        Metric::Cosine => 0,
        Metric::L2 => 1,
        Metric::Dot => 2,
    }
}

fn metric_from(code: u32) -> Option<Metric> {
    match code {
        0 => Some(Metric::Cosine),
        1 => Some(Metric::L2),
        2 => Some(Metric::Dot),
        _ => None,
    }
}

/// A writer that counts and checksums what passes through it; the file ends with the CRC-32
/// of everything before it.
struct Checksummed<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
    len: usize,
}

impl<W: Write> Checksummed<W> {
    fn new(w: W) -> Self {
        Checksummed {
            w,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.len += b.len();
        self.w.write_all(b)
    }

    /// Zeros up to the next multiple of [`ALIGN`].
    fn pad(&mut self) -> io::Result<()> {
        let k = (ALIGN - self.len % ALIGN) % ALIGN;
        self.put(&[0u8; ALIGN][..k])
    }

    /// Appends the checksum and flushes.
    fn finish(mut self) -> io::Result<W> {
        let crc = self.crc.clone().finalize();
        self.w.write_all(&crc.to_le_bytes())?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Trains and encodes an index over row-major `vectors`, then writes it to `dir/ivfpq.bin`.
pub fn build(
    dir: &Path,
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: IvfPqParams,
) -> Result<()> {
    let n = vectors.len() / dim;
    if params.m == 0 || !dim.is_multiple_of(params.m) {
        return Err(Error::invalid(
            "index.pq_m",
            format!("{} does not divide the dimension {dim}", params.m),
        ));
    }
    if params.bits != 4 && params.bits != 8 {
        return Err(Error::invalid(
            "index.pq_bits",
            format!("must be 4 or 8, got {}", params.bits),
        ));
    }
    let ksub = 1usize << params.bits;
    let nlist = params.nlist.clamp(1, (n / MIN_ROWS_PER_LIST).max(1));
    let t0 = std::time::Instant::now();
    // Calibration queries are held out of training, so they behave as unseen queries.
    let held = calibrate::held_out(n, params.seed);
    let mut rng = SplitMix64::new(params.seed ^ 0xA5A5);
    let training_rows = |count: usize, rng: &mut SplitMix64| -> Vec<usize> {
        kmeans::sample_rows(n, count + held.len(), rng)
            .into_iter()
            .filter(|r| held.binary_search(r).is_err())
            .collect()
    };
    // Ten Lloyd iterations for the coarse quantizer, as FAISS does for IVF training.
    let mut kp = KMeansParams::new(nlist, params.seed);
    kp.max_iters = 10;
    let coarse_train: Vec<f32> = training_rows(nlist * kp.max_points_per_centroid, &mut rng)
        .iter()
        .flat_map(|&r| vectors[r * dim..(r + 1) * dim].iter().copied())
        .collect();
    let centroids = kmeans::train(&coarse_train, dim, &kp);
    drop(coarse_train);
    let t_coarse = t0.elapsed();
    let (assignment, _) = kmeans::assign(vectors, dim, &centroids);
    let t_assign = t0.elapsed();
    // PQ on residuals of a sample.
    let sample = training_rows(65_536, &mut rng);
    let residual_into = |r: usize, out: &mut [f32]| {
        let c = assignment[r] as usize;
        for ((o, x), y) in out
            .iter_mut()
            .zip(&vectors[r * dim..(r + 1) * dim])
            .zip(&centroids[c * dim..(c + 1) * dim])
        {
            *o = x - y;
        }
    };
    let mut train = vec![0.0f32; sample.len() * dim];
    for (&r, out) in sample.iter().zip(train.chunks_exact_mut(dim)) {
        residual_into(r, out);
    }
    let pq = ProductQuantizer::train(&train, dim, params.m, ksub, params.seed);
    drop(train);
    let t_pq = t0.elapsed();
    let m = params.m;
    // Counting sort into list-major order.
    let mut offsets = vec![0u64; nlist + 1];
    for &a in &assignment {
        offsets[a as usize + 1] += 1;
    }
    for l in 0..nlist {
        offsets[l + 1] += offsets[l];
    }
    let mut fill = offsets.clone();
    let mut rows = vec![0u32; n];
    for (r, &a) in assignment.iter().enumerate() {
        let at = fill[a as usize] as usize;
        fill[a as usize] += 1;
        rows[at] = r as u32;
    }
    drop(fill);
    // Encoded straight into list-major order from residuals made a chunk at a time: the
    // build never holds all residuals (n·dim floats) or a second, row-major copy of the codes.
    let list_codes = pq.encode_rows(n, |at, out| residual_into(rows[at] as usize, out));
    tracing::debug!(
        rows = n,
        nlist,
        m,
        coarse_ms = t_coarse.as_millis() as u64,
        assign_ms = (t_assign - t_coarse).as_millis() as u64,
        pq_train_ms = (t_pq - t_assign).as_millis() as u64,
        encode_ms = (t0.elapsed() - t_pq).as_millis() as u64,
        "IVF-PQ build phases"
    );
    drop(assignment);
    let l2 = (metric == Metric::L2).then(|| {
        let shift = mean(vectors, dim);
        L2Parts::compute(&pq, &centroids, shift, &offsets, &list_codes)
    });

    // Streamed to the file (4-bit lists packed one at a time), checksummed on the way.
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut out = Checksummed::new(io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(&tmp)?,
    ));
    out.put(MAGIC)?;
    for v in [
        VERSION,
        metric_code(metric),
        dim as u32,
        nlist as u32,
        m as u32,
    ] {
        out.put(&v.to_le_bytes())?;
    }
    out.put(&(n as u64).to_le_bytes())?;
    out.put(&params.seed.to_le_bytes())?;
    out.put(&params.bits.to_le_bytes())?;
    out.pad()?;
    out.put(bytemuck::cast_slice(&centroids))?;
    out.pad()?;
    out.put(bytemuck::cast_slice(&pq.codebooks))?;
    out.pad()?;
    out.put(bytemuck::cast_slice(&offsets))?;
    out.pad()?;
    out.put(bytemuck::cast_slice(&rows))?;
    out.pad()?;
    if params.bits == 4 {
        for w in offsets.windows(2) {
            out.put(&fastscan::pack(
                &list_codes[w[0] as usize * m..w[1] as usize * m],
                m,
            ))?;
        }
    } else {
        out.put(&list_codes)?;
    }
    drop(list_codes);
    if let Some(l2) = &l2 {
        out.pad()?;
        out.put(bytemuck::cast_slice(l2.terms_owned.as_slice()))?;
        out.pad()?;
        out.put(bytemuck::cast_slice(&l2.shift))?;
        out.pad()?;
        out.put(bytemuck::cast_slice(&l2.list_min))?;
    }
    out.finish()?.get_ref().sync_all()?;
    let t_cal = std::time::Instant::now();
    let index = IvfPqIndex::open_file(&tmp, dim, metric, n, None)?;
    Calibration::measure(&index, vectors, dim, metric, params.seed).write(dir)?;
    tracing::debug!(
        calibrate_ms = t_cal.elapsed().as_millis() as u64,
        "IVF-PQ calibrated"
    );
    drop(index);
    fs::rename(&tmp, dir.join(FILE_NAME))?;
    sync_dir(dir)?;
    Ok(())
}

/// An opened IVF-PQ index (memory-mapped).
#[derive(Debug)]
pub struct IvfPqIndex {
    map: MappedFile,
    metric: Metric,
    dim: usize,
    nlist: usize,
    m: usize,
    bits: u32,
    rows: usize,
    pq: ProductQuantizer,
    /// 4-bit: the codebooks laid out for per-query tables.
    books16: Option<pq::Books16>,
    /// 4-bit: list `l` is packed blocks `block_offsets[l]..block_offsets[l+1]`.
    block_offsets: Vec<u64>,
    /// Measured recall per nprobe (empty while the index is being calibrated).
    calibration: Calibration,
    /// Recall per nprobe measured on sampled served queries.
    served: Served,
    /// The coarse centroids as half floats, for the probe step's shortlist.
    coarse: HalfTable,
    centroids_at: usize,
    offsets_at: usize,
    rows_at: usize,
    codes_at: usize,
    codes_end: usize,
    /// The l2 decomposition's parts (l2 indexes only).
    l2: Option<L2Parts>,
    /// The list of each row, built on the first filtered search that needs it (see
    /// [`IvfPqIndex::list_of_rows`]).
    list_of: OnceLock<Vec<u16>>,
}

/// What an l2 index adds to the codes so that one table per query serves every list.
#[derive(Debug)]
struct L2Parts {
    /// Where the per-entry terms start in the file (version 3), or `None` when they were
    /// computed at open into `terms_owned` (versions 1 and 2).
    terms_at: Option<usize>,
    terms_owned: Vec<f32>,
    /// `μ`: the query is shifted by it before its table is built.
    shift: Vec<f32>,
    /// The smallest term of each list: a list's score limit assumes it.
    list_min: Vec<f32>,
}

impl L2Parts {
    /// Terms for list-major `codes` (`m` bytes per entry, unpacked).
    fn compute(
        pq: &ProductQuantizer,
        centroids: &[f32],
        shift: Vec<f32>,
        offsets: &[u64],
        codes: &[u8],
    ) -> L2Parts {
        let (dim, m, ksub, dsub) = (pq.dim, pq.m, pq.ksub, pq.dsub());
        let terms: Vec<f32> = offsets
            .par_windows(2)
            .enumerate()
            .flat_map_iter(|(l, w)| {
                let c = &centroids[l * dim..(l + 1) * dim];
                // table[j·ksub + k] = ‖b‖² + 2·(c − μ)_j·b for centroid b = k of sub-space j.
                let mut table = Vec::with_capacity(m * ksub);
                for j in 0..m {
                    let (cj, sj) = (
                        &c[j * dsub..(j + 1) * dsub],
                        &shift[j * dsub..(j + 1) * dsub],
                    );
                    for b in pq.codebooks[j * ksub * dsub..(j + 1) * ksub * dsub].chunks_exact(dsub)
                    {
                        table.push(
                            b.iter()
                                .zip(cj.iter().zip(sj))
                                .map(|(b, (c, s))| b * b + 2.0 * (c - s) * b)
                                .sum::<f32>(),
                        );
                    }
                }
                codes[w[0] as usize * m..w[1] as usize * m]
                    .chunks_exact(m)
                    .map(|code| {
                        code.iter()
                            .enumerate()
                            .map(|(j, &k)| table[j * ksub + usize::from(k)])
                            .sum::<f32>()
                    })
                    .collect::<Vec<f32>>()
            })
            .collect();
        let list_min = offsets
            .windows(2)
            .map(|w| {
                terms[w[0] as usize..w[1] as usize]
                    .iter()
                    .copied()
                    .fold(f32::INFINITY, f32::min)
            })
            .collect();
        L2Parts {
            terms_at: None,
            terms_owned: terms,
            shift,
            list_min,
        }
    }
}

/// The mean of row-major `vectors` (summed in f64).
fn mean(vectors: &[f32], dim: usize) -> Vec<f32> {
    let n = (vectors.len() / dim).max(1);
    let sum = vectors
        .par_chunks(dim * 4096)
        .map(|chunk| {
            let mut acc = vec![0.0f64; dim];
            for row in chunk.chunks_exact(dim) {
                acc.iter_mut()
                    .zip(row)
                    .for_each(|(a, &x)| *a += f64::from(x));
            }
            acc
        })
        .reduce(
            || vec![0.0f64; dim],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    sum.iter().map(|s| (s / n as f64) as f32).collect()
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

impl IvfPqIndex {
    /// Opens and verifies `dir/ivfpq.bin` and its calibration; `Ok(None)` if there is no index.
    pub fn open(dir: &Path, dim: usize, metric: Metric, rows: usize) -> Result<Option<IvfPqIndex>> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            return Ok(None);
        }
        let calibration = Calibration::read(dir)?;
        Self::open_file(&path, dim, metric, rows, Some(calibration)).map(Some)
    }

    fn open_file(
        path: &Path,
        dim: usize,
        metric: Metric,
        rows: usize,
        calibration: Option<Calibration>,
    ) -> Result<IvfPqIndex> {
        let map = MappedFile::open(path)?;
        let b = map.bytes();
        let bad = |d: &str| Error::corrupt(path, 0, d.to_owned());
        if b.len() < ALIGN + 4 || &b[0..4] != MAGIC {
            return Err(bad("not an IVF-PQ index file"));
        }
        let (body, trailer) = b.split_at(b.len() - 4);
        if crc32fast::hash(body)
            != u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]])
        {
            return Err(bad("index checksum mismatch"));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let (version, mcode, fdim, nlist, m) = (
            u32_at(4),
            u32_at(8),
            u32_at(12) as usize,
            u32_at(16) as usize,
            u32_at(20) as usize,
        );
        let frows = u64::from_le_bytes(b[24..32].try_into().expect("invariant: 8 bytes")) as usize;
        let bits = if version == 1 { 8 } else { u32_at(40) };
        if !(1..=VERSION).contains(&version)
            || !(bits == 4 || bits == 8)
            || metric_from(mcode) != Some(metric)
            || fdim != dim
            || frows != rows
            || m == 0
            || !dim.is_multiple_of(m)
            || nlist == 0
            || nlist > MAX_NLIST
        {
            return Err(bad("index header does not match the segment"));
        }
        let centroids_at = ALIGN;
        let books_at = align(centroids_at + nlist * dim * 4);
        let ksub = 1usize << bits;
        let offsets_at = align(books_at + m * ksub * (dim / m) * 4);
        let rows_at = align(offsets_at + (nlist + 1) * 8);
        let codes_at = align(rows_at + rows * 4);
        if offsets_at + (nlist + 1) * 8 > body.len() {
            return Err(bad("index file length does not match its header"));
        }
        let offs: &[u64] = bytemuck::cast_slice(&b[offsets_at..offsets_at + (nlist + 1) * 8]);
        if offs[0] != 0 || offs[nlist] as usize != rows || offs.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad("index lists are inconsistent"));
        }
        let mut block_offsets = Vec::new();
        let code_bytes = if bits == 4 {
            block_offsets.reserve(nlist + 1);
            block_offsets.push(0u64);
            for w in offs.windows(2) {
                let blocks = (w[1] - w[0]).div_ceil(fastscan::BLOCK as u64);
                block_offsets.push(block_offsets[block_offsets.len() - 1] + blocks);
            }
            block_offsets[nlist] as usize * fastscan::block_bytes(m)
        } else {
            rows * m
        };
        let codes_end = codes_at + code_bytes;
        let l2_sections = version >= 3 && metric == Metric::L2;
        let (terms_at, shift_at, min_at) = (
            align(codes_end),
            align(align(codes_end) + rows * 4),
            align(align(align(codes_end) + rows * 4) + dim * 4),
        );
        let end = if l2_sections {
            min_at + nlist * 4
        } else {
            codes_end
        };
        if end != body.len() {
            return Err(bad("index file length does not match its header"));
        }
        let codebooks: Vec<f32> =
            bytemuck::cast_slice(&b[books_at..books_at + m * ksub * (dim / m) * 4]).to_vec();
        let coarse = HalfTable::new(
            bytemuck::cast_slice(&b[centroids_at..centroids_at + nlist * dim * 4]),
            dim,
        );
        let pq = ProductQuantizer {
            dim,
            m,
            ksub,
            codebooks,
        };
        let mut idx = IvfPqIndex {
            books16: (bits == 4).then(|| pq::Books16::new(&pq)),
            pq,
            coarse,
            metric,
            dim,
            nlist,
            m,
            bits,
            rows,
            block_offsets,
            calibration: calibration.unwrap_or(Calibration {
                queries: 0,
                refine: 0,
                points: Vec::new(),
            }),
            served: Served::open(path.parent().unwrap_or(Path::new(".")), nlist),
            centroids_at,
            offsets_at,
            rows_at,
            codes_at,
            codes_end,
            l2: None,
            list_of: OnceLock::new(),
            map,
        };
        if idx.row_ids().iter().any(|&r| r as usize >= rows) {
            return Err(bad("index lists are inconsistent"));
        }
        if l2_sections {
            let b = idx.map.bytes();
            let floats = |at: usize, n: usize| -> Vec<f32> {
                b[at..at + n * 4]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            idx.l2 = Some(L2Parts {
                terms_at: Some(terms_at),
                terms_owned: Vec::new(),
                shift: floats(shift_at, dim),
                list_min: floats(min_at, nlist),
            });
        } else if metric == Metric::L2 {
            idx.l2 = Some(idx.legacy_l2_parts());
        }
        Ok(idx)
    }

    /// The recall measured per nprobe at build time.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// The recall measured per nprobe on sampled served queries.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// The smallest nprobe expected to reach recall@10 `target`: from the served queries'
    /// curve once enough are measured, else from the held-out rows' curve.
    pub fn nprobe_for(&self, target: f64) -> usize {
        self.served
            .nprobe_for(target)
            .unwrap_or_else(|| self.calibration.nprobe_for(target))
    }

    /// Number of inverted lists.
    pub fn nlist(&self) -> usize {
        self.nlist
    }

    /// PQ sub-spaces.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Bits per sub-space code.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Bytes of the index file.
    pub fn bytes(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    fn centroids(&self) -> &[f32] {
        bytemuck::cast_slice(
            &self.map.bytes()[self.centroids_at..self.centroids_at + self.nlist * self.dim * 4],
        )
    }

    fn offsets(&self) -> &[u64] {
        bytemuck::cast_slice(
            &self.map.bytes()[self.offsets_at..self.offsets_at + (self.nlist + 1) * 8],
        )
    }

    fn row_ids(&self) -> &[u32] {
        bytemuck::cast_slice(&self.map.bytes()[self.rows_at..self.rows_at + self.rows * 4])
    }

    fn codes(&self) -> &[u8] {
        &self.map.bytes()[self.codes_at..self.codes_end]
    }

    /// The l2 per-entry terms, list-major (empty for other metrics).
    fn terms(&self) -> &[f32] {
        match &self.l2 {
            Some(L2Parts {
                terms_at: Some(at), ..
            }) => bytemuck::cast_slice(&self.map.bytes()[*at..*at + self.rows * 4]),
            Some(p) => &p.terms_owned,
            None => &[],
        }
    }

    /// A file written before version 3 carries no l2 terms: they are computed from its codes,
    /// with the list-size-weighted mean of the centroids as `μ`.
    fn legacy_l2_parts(&self) -> L2Parts {
        let (offsets, dim, m) = (self.offsets(), self.dim, self.m);
        let mut shift = vec![0.0f64; dim];
        for (l, c) in self.centroids().chunks_exact(dim).enumerate() {
            let w = (offsets[l + 1] - offsets[l]) as f64;
            shift
                .iter_mut()
                .zip(c)
                .for_each(|(s, &x)| *s += w * f64::from(x));
        }
        let n = self.rows.max(1) as f64;
        let shift: Vec<f32> = shift.iter().map(|s| (s / n) as f32).collect();
        let codes = if self.bits == 4 {
            let bb = fastscan::block_bytes(m);
            let mut out = Vec::with_capacity(self.rows * m);
            for l in 0..self.nlist {
                let blocks = &self.codes()
                    [self.block_offsets[l] as usize * bb..self.block_offsets[l + 1] as usize * bb];
                out.extend(fastscan::unpack(
                    blocks,
                    m,
                    (offsets[l + 1] - offsets[l]) as usize,
                ));
            }
            out
        } else {
            self.codes().to_vec()
        };
        L2Parts::compute(&self.pq, self.centroids(), shift, offsets, &codes)
    }

    /// Scans the `nprobe` nearest lists and returns up to `n_candidates` rows by approximate
    /// distance (lower is closer), skipping rows for which `is_deleted` holds.
    pub fn search(
        &self,
        query: &[f32],
        nprobe: usize,
        n_candidates: usize,
        is_deleted: impl Fn(u32) -> bool,
    ) -> TopK<u32> {
        let nprobe = nprobe.clamp(1, self.nlist);
        let (coarse, ips) = self.shortlist(query, nprobe);
        self.scan(query, coarse, nprobe, &ips, n_candidates, is_deleted)
    }

    /// The lists a probe of `nprobe` lists reads for `query`, in no particular order: the lists
    /// [`IvfPqIndex::search`] scans (a batch through [`IvfPqIndex::search_many`] ranks every
    /// list by its exact product instead, so the two can differ at near-ties).
    pub fn nearest_lists(&self, query: &[f32], nprobe: usize) -> Vec<u32> {
        let nprobe = nprobe.clamp(1, self.nlist);
        let (mut coarse, _) = self.shortlist(query, nprobe);
        if nprobe < coarse.len() {
            coarse.select_nth_unstable_by(nprobe - 1, |a, b| a.0.total_cmp(&b.0));
            coarse.truncate(nprobe);
        }
        coarse.into_iter().map(|(_, l)| l).collect()
    }

    /// The list of each row of the segment. Built once, on first use, from the lists' row ids:
    /// 2 bytes per row (`MAX_NLIST` lists fit in a `u16`, which `open` enforces), for filtered
    /// searches that scan the allowed rows of the nearest lists. A valid index holds every row
    /// once (`open` checks the lists' offsets and row ids); a row it does not hold keeps
    /// `u16::MAX`.
    pub fn list_of_rows(&self) -> &[u16] {
        self.list_of.get_or_init(|| {
            let (offsets, ids) = (self.offsets(), self.row_ids());
            let mut out = vec![u16::MAX; self.rows];
            for l in 0..self.nlist {
                for &r in &ids[offsets[l] as usize..offsets[l + 1] as usize] {
                    if let Some(x) = out.get_mut(r as usize) {
                        *x = u16::try_from(l).unwrap_or(u16::MAX);
                    }
                }
            }
            out
        })
    }

    /// Heap bytes of the row-to-list map (0 until a filtered search builds it).
    pub fn list_map_bytes(&self) -> usize {
        self.list_of.get().map_or(0, |v| v.len() * 2)
    }

    /// The candidate lists of a probe of `nprobe` lists, with their keys, and `q·c` per list
    /// (exact for the candidates). The half-float products shortlist the lists; the shortlist
    /// is ranked, and every probed list's offset taken, from exact products with the f32
    /// centroids.
    fn shortlist(&self, query: &[f32], nprobe: usize) -> (Vec<(f32, u32)>, Vec<f32>) {
        let mut ips = Vec::with_capacity(self.nlist);
        self.coarse.inner_products(query, &mut ips);
        let mut coarse = self.keys(&ips);
        let short = coarse::shortlist(nprobe, self.nlist);
        if short < coarse.len() {
            coarse.select_nth_unstable_by(short - 1, |a, b| a.0.total_cmp(&b.0));
            coarse.truncate(short);
        }
        let centroids = self.centroids();
        for (k, l) in coarse.iter_mut() {
            let l = *l as usize;
            ips[l] = dot(query, &centroids[l * self.dim..(l + 1) * self.dim]);
            *k = self.key(l, ips[l]);
        }
        (coarse, ips)
    }

    /// [`IvfPqIndex::search`] for several queries (`n_candidates[i]` for query `i`). From
    /// [`BATCH_PROBE_MIN`] queries up, the probe is one matrix product of the queries against
    /// the f32 centroids (every centroid read once for the batch, not once per query), so every
    /// list is ranked by its exact product rather than shortlisted through half floats.
    pub fn search_many(
        &self,
        queries: &[&[f32]],
        nprobe: usize,
        n_candidates: &[usize],
        is_deleted: impl Fn(u32) -> bool,
    ) -> Vec<TopK<u32>> {
        let dim = self.dim;
        if queries.len() < BATCH_PROBE_MIN || dim < 16 || self.nlist < 64 {
            return queries
                .iter()
                .zip(n_candidates)
                .map(|(q, &n)| self.search(q, nprobe, n, &is_deleted))
                .collect();
        }
        let nprobe = nprobe.clamp(1, self.nlist);
        // The products of one chunk of queries stay within 4 MB.
        let chunk = ((1usize << 20) / self.nlist).max(1);
        let mut out = Vec::with_capacity(queries.len());
        let mut flat = Vec::with_capacity(chunk.min(queries.len()) * dim);
        let mut ips = Vec::new();
        for (qs, ns) in queries.chunks(chunk).zip(n_candidates.chunks(chunk)) {
            flat.clear();
            qs.iter().for_each(|q| flat.extend_from_slice(&q[..dim]));
            ips.clear();
            ips.resize(qs.len() * self.nlist, 0.0);
            kmeans::dots(&flat, dim, self.centroids(), self.nlist, &mut ips);
            out.extend(
                qs.iter()
                    .zip(ns)
                    .zip(ips.chunks_exact(self.nlist))
                    .map(|((q, &n), ips)| {
                        self.scan(q, self.keys(ips), nprobe, ips, n, &is_deleted)
                    }),
            );
        }
        out
    }

    /// A list's probe key from `ip = q·c`: `‖q − c‖²` less the constant `‖q‖²`, or `−q·c`.
    /// Lists were formed by L2 k-means, so cosine (unit vectors, where L2 and cosine
    /// neighbours coincide) probes by L2 too; ranking by q·c would favour large-norm
    /// centroids over the nearest ones. Dot (MIPS) probes by inner product.
    fn key(&self, l: usize, ip: f32) -> f32 {
        if self.metric != Metric::Dot {
            self.coarse.norm(l) - 2.0 * ip
        } else {
            -ip
        }
    }

    /// (key, list) for every list, from the products `ips`.
    fn keys(&self, ips: &[f32]) -> Vec<(f32, u32)> {
        ips.iter()
            .enumerate()
            .map(|(l, &ip)| (self.key(l, ip), l as u32))
            .collect()
    }

    /// Scans the `nprobe` lists of `coarse` with the smallest keys; `ips[l]` is `q·c_l` for
    /// every list in `coarse`.
    fn scan(
        &self,
        query: &[f32],
        mut coarse: Vec<(f32, u32)>,
        nprobe: usize,
        ips: &[f32],
        n_candidates: usize,
        is_deleted: impl Fn(u32) -> bool,
    ) -> TopK<u32> {
        let ip = matches!(self.metric, Metric::Cosine | Metric::Dot);
        if nprobe < coarse.len() {
            coarse.select_nth_unstable_by(nprobe - 1, |a, b| a.0.total_cmp(&b.0));
            coarse.truncate(nprobe);
        }
        let mut top = TopK::new(n_candidates);
        if self.bits == 4 {
            self.scan_fast(query, &coarse, ips, &mut top, is_deleted);
            return top;
        }
        let (offsets, rows, codes, m) = (self.offsets(), self.row_ids(), self.codes(), self.m);
        let terms = self.terms();
        let mut lut: pq::Lut = Vec::with_capacity(m);
        let shifted = self.shifted(query);
        self.pq
            .ip_table(shifted.as_deref().unwrap_or(query), &mut lut);
        let qn = query.iter().map(|x| x * x).sum::<f32>();
        for &(_, l) in &coarse {
            let (s, e) = (
                offsets[l as usize] as usize,
                offsets[l as usize + 1] as usize,
            );
            if s == e {
                continue;
            }
            let base = if ip {
                ips[l as usize]
            } else {
                // ‖q − c‖²; an entry adds its term and −2·(q − μ)·r̂.
                qn + self.coarse.norm(l as usize) - 2.0 * ips[l as usize]
            };
            let to_distance = |i: usize, a: f32| match self.metric {
                Metric::Cosine => 1.0 - (base + a),
                Metric::Dot => -(base + a),
                Metric::L2 => base + terms[s + i] - 2.0 * a,
            };
            let mut offer = |i: usize, a: f32| {
                let d = to_distance(i, a);
                if d < top.threshold() {
                    let row = rows[s + i];
                    if !is_deleted(row) {
                        top.push(d, row);
                    }
                }
            };
            let list = &codes[s * m..e * m];
            let blocks = list.chunks_exact(4 * m);
            let tail = blocks.remainder();
            let mut i = 0;
            for block in blocks {
                for (o, a) in pq::adc4(&lut, block, m).into_iter().enumerate() {
                    offer(i + o, a);
                }
                i += 4;
            }
            for code in tail.chunks_exact(m) {
                offer(i, pq::adc(&lut, code));
                i += 1;
            }
        }
        top
    }

    /// The offset `o` of a list (from `ip = q·c`) such that an entry's distance is
    /// `o + ADC sum`, where the ADC table holds `−q·r` (cosine and dot).
    fn list_offset(&self, ip: f32) -> f32 {
        match self.metric {
            Metric::Dot => -ip,
            Metric::Cosine | Metric::L2 => 1.0 - ip,
        }
    }

    /// `q − μ` for an l2 index, whose tables are built from the shifted query.
    fn shifted(&self, query: &[f32]) -> Option<Vec<f32>> {
        self.l2
            .as_ref()
            .map(|p| query.iter().zip(&p.shift).map(|(q, m)| q - m).collect())
    }

    /// 4-bit fast-scan over the probed lists.
    fn scan_fast(
        &self,
        query: &[f32],
        coarse: &[(f32, u32)],
        ips: &[f32],
        top: &mut TopK<u32>,
        is_deleted: impl Fn(u32) -> bool,
    ) {
        let (offsets, rows, codes, m) = (self.offsets(), self.row_ids(), self.codes(), self.m);
        let bb = fastscan::block_bytes(m);
        let terms = self.terms();
        let mut flat = Vec::with_capacity(m * fastscan::KSUB);
        let mut lut = QuantizedLut::default();
        let (mut scores, mut masks) = (Vec::new(), Vec::new());
        // One table per query: −q·r (cosine, dot) or −2·(q − μ)·r (l2).
        let factor = if self.metric == Metric::L2 {
            -2.0
        } else {
            -1.0
        };
        let shifted = self.shifted(query);
        let books = self
            .books16
            .as_ref()
            .expect("invariant: 4-bit indexes have Books16");
        books.ip_table(shifted.as_deref().unwrap_or(query), factor, &mut flat);
        QuantizedLut::quantize(&flat, m, &mut lut);
        let qn = query.iter().map(|x| x * x).sum::<f32>();
        for &(_, l) in coarse {
            let l = l as usize;
            let (s, e) = (offsets[l] as usize, offsets[l + 1] as usize);
            if s == e {
                continue;
            }
            // The list's part of every entry's distance; for l2 each entry adds its term, at
            // least the list's smallest one, which bounds the scores worth looking at.
            let (off, least) = match &self.l2 {
                Some(p) => (qn + self.coarse.norm(l) - 2.0 * ips[l], p.list_min[l]),
                None => (self.list_offset(ips[l]), 0.0),
            };
            let Some(limit) = lut.score_limit(top.threshold() - off - least) else {
                continue;
            };
            let blocks = &codes
                [self.block_offsets[l] as usize * bb..self.block_offsets[l + 1] as usize * bb];
            fastscan::scan(&lut.table, blocks, m, limit, &mut scores, &mut masks);
            for (bi, &mask) in masks.iter().enumerate() {
                let mut bits = mask;
                while bits != 0 {
                    let i = bi * fastscan::BLOCK + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if i >= e - s {
                        break;
                    }
                    let d =
                        off + lut.distance(scores[i]) + terms.get(s + i).copied().unwrap_or(0.0);
                    if d < top.threshold() {
                        let row = rows[s + i];
                        if !is_deleted(row) {
                            top.push(d, row);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::distance;

    fn data(n: usize, dim: usize, seed: u64, normalize: bool) -> Vec<f32> {
        // Clustered data, like real embeddings.
        let mut rng = SplitMix64::new(seed);
        let mut u = || rng.below(20_000) as f32 / 10_000.0 - 1.0;
        let centers: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| u()).collect()).collect();
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let c = &centers[i % 20];
            let mut v: Vec<f32> = c.iter().map(|x| x + 0.35 * u()).collect();
            if normalize {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
            }
            out.extend(v);
        }
        out
    }

    /// The row-to-list map agrees with the lists' row ids, and `nearest_lists` names the lists
    /// whose centroids are nearest to the query (by exact L2, up to rounding at near-ties).
    #[test]
    fn rows_map_to_their_lists_and_the_nearest_lists_are_nearest() {
        let (n, dim) = (3000, 16);
        let xs = data(n, dim, 5, false);
        let dir = tempfile::tempdir().unwrap();
        let params = IvfPqParams::for_data(n, dim, None, None, 4);
        build(dir.path(), &xs, dim, Metric::L2, params).unwrap();
        let idx = IvfPqIndex::open(dir.path(), dim, Metric::L2, n)
            .unwrap()
            .unwrap();
        let (offsets, ids, list_of) = (idx.offsets(), idx.row_ids(), idx.list_of_rows());
        assert_eq!(list_of.len(), n);
        for l in 0..idx.nlist() {
            for &r in &ids[offsets[l] as usize..offsets[l + 1] as usize] {
                assert_eq!(usize::from(list_of[r as usize]), l, "row {r}");
            }
        }
        assert!(list_of.iter().all(|&l| usize::from(l) < idx.nlist()));
        let centroids = idx.centroids();
        for q in data(20, dim, 77, false).chunks_exact(dim) {
            let d = |l: usize| -> f32 {
                q.iter()
                    .zip(&centroids[l * dim..(l + 1) * dim])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum()
            };
            let mut all: Vec<f32> = (0..idx.nlist()).map(d).collect();
            all.sort_by(f32::total_cmp);
            for p in [1, 3, 8] {
                let near = idx.nearest_lists(q, p);
                assert_eq!(near.len(), p);
                let worst = near.iter().map(|&l| d(l as usize)).fold(0.0, f32::max);
                assert!(
                    worst <= all[p - 1] * (1.0 + 1e-4) + 1e-5,
                    "nprobe {p}: a list at {worst}, the {p}th nearest at {}",
                    all[p - 1]
                );
            }
        }
    }

    #[test]
    fn recall_against_exact_for_every_metric_and_file_checks() {
        let (n, dim) = (4000, 16);
        for (metric, bits) in [Metric::Cosine, Metric::L2, Metric::Dot]
            .into_iter()
            .flat_map(|m| [(m, 8), (m, 4)])
        {
            let xs = data(n, dim, 11, metric == Metric::Cosine);
            let dir = tempfile::tempdir().unwrap();
            let params = IvfPqParams::for_data(n, dim, None, None, bits);
            build(dir.path(), &xs, dim, metric, params).unwrap();
            let idx = IvfPqIndex::open(dir.path(), dim, metric, n)
                .unwrap()
                .unwrap();
            let qs = data(50, dim, 99, metric == Metric::Cosine);
            // Candidates ×10, then exact re-rank, as the engine does.
            let cands: Vec<Vec<u32>> = qs
                .chunks_exact(dim)
                .map(|q| {
                    let top = idx.search(q, idx.nlist() / 4, 100, |r| r % 10 == 3);
                    top.into_sorted().into_iter().map(|c| c.key).collect()
                })
                .collect();
            let recall = reranked_recall(metric, &xs, &qs, dim, &cands, |r| r % 10 == 3);
            assert!(
                recall >= 0.9,
                "{metric:?} {bits}-bit: recall@10 {recall} at nprobe nlist/4, refine 10"
            );
        }
    }

    /// Re-ranked recall@10 of candidate lists against the exact neighbours of `qs`.
    fn reranked_recall(
        metric: Metric,
        xs: &[f32],
        qs: &[f32],
        dim: usize,
        cands: &[Vec<u32>],
        deleted: impl Fn(u32) -> bool,
    ) -> f64 {
        let mut hit = 0;
        for (q, cands) in qs.chunks_exact(dim).zip(cands) {
            let at = |r: u32| &xs[r as usize * dim..(r as usize + 1) * dim];
            let mut rer = TopK::new(10);
            for &c in cands {
                assert!(!deleted(c), "deleted row {c} returned");
                rer.push(distance(metric, q, at(c)), c);
            }
            let mut exact = TopK::new(10);
            for r in (0..(xs.len() / dim) as u32).filter(|r| !deleted(*r)) {
                exact.push(distance(metric, q, at(r)), r);
            }
            let truth: std::collections::HashSet<u32> =
                exact.into_sorted().into_iter().map(|c| c.key).collect();
            hit += rer
                .into_sorted()
                .iter()
                .filter(|c| truth.contains(&c.key))
                .count();
        }
        hit as f64 / (10 * qs.len() / dim) as f64
    }

    #[test]
    fn batched_probe_finds_what_single_queries_find() {
        let (n, dim, nq) = (6000, 32, 40);
        let deleted = |r: u32| r % 7 == 2;
        for (metric, bits) in [Metric::Cosine, Metric::L2, Metric::Dot]
            .into_iter()
            .flat_map(|m| [(m, 8), (m, 4)])
        {
            let xs = data(n, dim, 5, metric == Metric::Cosine);
            let dir = tempfile::tempdir().unwrap();
            let params = IvfPqParams::for_data(n, dim, Some(64), None, bits);
            build(dir.path(), &xs, dim, metric, params).unwrap();
            let idx = IvfPqIndex::open(dir.path(), dim, metric, n)
                .unwrap()
                .unwrap();
            assert_eq!(idx.nlist(), 64);
            let qs = data(nq, dim, 77, metric == Metric::Cosine);
            let refs: Vec<&[f32]> = qs.chunks_exact(dim).collect();
            let wanted: Vec<usize> = (0..nq).map(|i| 20 + i % 30).collect();
            for nprobe in [1, 4, 64] {
                let keys = |t: TopK<u32>| t.into_sorted().iter().map(|c| c.key).collect();
                let many: Vec<Vec<u32>> = idx
                    .search_many(&refs, nprobe, &wanted, deleted)
                    .into_iter()
                    .map(keys)
                    .collect();
                let single: Vec<Vec<u32>> = refs
                    .iter()
                    .zip(&wanted)
                    .map(|(q, &w)| keys(idx.search(q, nprobe, w, deleted)))
                    .collect();
                assert_eq!(many.len(), nq);
                let (mut same, mut total) = (0, 0);
                for ((m, s), &w) in many.iter().zip(&single).zip(&wanted) {
                    assert!(m.len() <= w, "{metric:?} {bits}-bit nprobe {nprobe}");
                    same += s.iter().filter(|c| m.contains(c)).count();
                    total += s.len();
                }
                let (rm, rs) = (
                    reranked_recall(metric, &xs, &qs, dim, &many, deleted),
                    reranked_recall(metric, &xs, &qs, dim, &single, deleted),
                );
                // The batch ranks lists by exact products, the single path by half floats
                // then exact ones: the same lists but for rare near-ties.
                assert!(
                    rm >= rs - 0.01,
                    "{metric:?} {bits}-bit nprobe {nprobe}: batch recall {rm} vs single {rs}"
                );
                assert!(
                    same as f64 >= 0.97 * total as f64,
                    "{metric:?} {bits}-bit nprobe {nprobe}: {same} of {total} candidates shared"
                );
            }
        }
    }

    /// Embedding-like data of any dimension: 20 clusters in a 24-dimensional latent space,
    /// mapped into `dim` dimensions by a fixed random matrix, plus a little isotropic noise
    /// (real embeddings have a low intrinsic dimension; uniform noise in 768 dimensions does not).
    fn embeddings(n: usize, dim: usize, seed: u64, normalize: bool) -> Vec<f32> {
        const LATENT: usize = 24;
        let mut basis_rng = SplitMix64::new(0xE3B);
        let u = |r: &mut SplitMix64| r.below(20_000) as f32 / 10_000.0 - 1.0;
        let basis: Vec<f32> = (0..LATENT * dim).map(|_| u(&mut basis_rng)).collect();
        let centers: Vec<f32> = (0..20 * LATENT).map(|_| u(&mut basis_rng)).collect();
        let mut rng = SplitMix64::new(seed);
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let c = &centers[(i % 20) * LATENT..(i % 20 + 1) * LATENT];
            let z: Vec<f32> = c.iter().map(|x| x + 0.5 * u(&mut rng)).collect();
            let mut v: Vec<f32> = (0..dim)
                .map(|j| {
                    z.iter()
                        .enumerate()
                        .map(|(l, zl)| zl * basis[l * dim + j])
                        .sum::<f32>()
                        + 0.05 * u(&mut rng)
                })
                .collect();
            if normalize {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
            }
            out.extend(v);
        }
        out
    }

    /// Recall measured with fresh queries (from the data's distribution, never indexed) at the
    /// nprobe the calibration picks is close to the target: for both code widths, and with the
    /// default (4-bit) codes at the dimensions of RAG embeddings (384, 768) and of
    /// Fashion-MNIST (784), where the default m packs two dimensions per sub-quantizer.
    #[test]
    fn calibration_predicts_recall_on_unseen_queries() {
        let (n, nq) = (6000, 300);
        type Gen = fn(usize, usize, u64, bool) -> Vec<f32>;
        let cases: [(Metric, u32, usize, Gen); 5] = [
            (Metric::L2, 4, 16, data),
            (Metric::Cosine, 8, 16, data),
            (Metric::Cosine, 4, 384, embeddings),
            (Metric::Dot, 4, 768, embeddings),
            (Metric::L2, 4, 784, embeddings),
        ];
        for (metric, bits, dim, gen_data) in cases {
            let nq = if dim > 64 { nq / 3 } else { nq };
            let all = gen_data(n + nq, dim, 5, metric == Metric::Cosine);
            let (xs, qs) = all.split_at(n * dim);
            let dir = tempfile::tempdir().unwrap();
            build(
                dir.path(),
                xs,
                dim,
                metric,
                IvfPqParams::for_data(n, dim, None, None, bits),
            )
            .unwrap();
            let idx = IvfPqIndex::open(dir.path(), dim, metric, n)
                .unwrap()
                .unwrap();
            let cal = idx.calibration();
            assert_eq!(cal.queries, 128);
            assert!(cal.points.windows(2).all(|w| w[0].nprobe < w[1].nprobe));
            for target in [0.8, 0.9, 0.95] {
                let nprobe = cal.nprobe_for(target);
                let mut hit = 0;
                for q in qs.chunks_exact(dim) {
                    let mut rer = TopK::new(10);
                    for c in idx.search(q, nprobe, 40, |_| false).into_sorted() {
                        let r = c.key as usize;
                        rer.push(distance(metric, q, &xs[r * dim..(r + 1) * dim]), c.key);
                    }
                    let mut exact = TopK::new(10);
                    for (r, v) in xs.chunks_exact(dim).enumerate() {
                        exact.push(distance(metric, q, v), r as u32);
                    }
                    let truth: Vec<u32> = exact.into_sorted().into_iter().map(|c| c.key).collect();
                    hit += rer
                        .into_sorted()
                        .iter()
                        .filter(|c| truth.contains(&c.key))
                        .count();
                }
                let recall = hit as f64 / (nq * 10) as f64;
                assert!(
                    recall >= target - 0.03,
                    "{metric:?} {bits}-bit {dim}-d: target {target}, nprobe {nprobe} gave {recall} ({:?})",
                    cal.points
                );
                assert!(
                    nprobe < idx.nlist(),
                    "{metric:?} {bits}-bit {dim}-d: target {target} needs every list"
                );
            }
        }
    }

    /// The l2 decomposition (one table per query plus a stored term per entry) gives the ADC
    /// distance of the decoded vector, `‖q − c − r̂‖²`; a version-2 file (no stored terms)
    /// gets the same distances from terms computed at open.
    #[test]
    fn l2_one_table_per_query_gives_the_decoded_distance_and_old_files_agree() {
        let (n, dim) = (3000, 16);
        let xs = data(n, dim, 21, false);
        let dir = tempfile::tempdir().unwrap();
        build(
            dir.path(),
            &xs,
            dim,
            Metric::L2,
            IvfPqParams::for_data(n, dim, None, None, 8),
        )
        .unwrap();
        let idx = IvfPqIndex::open(dir.path(), dim, Metric::L2, n)
            .unwrap()
            .unwrap();
        assert!(matches!(
            idx.l2,
            Some(L2Parts {
                terms_at: Some(_),
                ..
            })
        ));
        // The same file as version 2 wrote it: no l2 sections, version 2, a new CRC.
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        let mut v2 = bytes[..idx.codes_end].to_vec();
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        let old_dir = tempfile::tempdir().unwrap();
        std::fs::write(old_dir.path().join(FILE_NAME), &v2).unwrap();
        std::fs::copy(
            dir.path().join(calibrate::FILE_NAME),
            old_dir.path().join(calibrate::FILE_NAME),
        )
        .unwrap();
        let old = IvfPqIndex::open(old_dir.path(), dim, Metric::L2, n)
            .unwrap()
            .unwrap();
        assert!(matches!(old.l2, Some(L2Parts { terms_at: None, .. })));
        let (offsets, rows, codes, m) = (idx.offsets(), idx.row_ids(), idx.codes(), idx.m);
        let mut decoded = vec![0.0f32; n * dim];
        let mut rec = Vec::new();
        for l in 0..idx.nlist {
            let c = &idx.centroids()[l * dim..(l + 1) * dim];
            for e in offsets[l] as usize..offsets[l + 1] as usize {
                idx.pq.decode(&codes[e * m..(e + 1) * m], &mut rec);
                let r = rows[e] as usize;
                for (d, o) in decoded[r * dim..(r + 1) * dim].iter_mut().enumerate() {
                    *o = c[d] + rec[d];
                }
            }
        }
        for q in data(20, dim, 77, false).chunks_exact(dim) {
            let all = |i: &IvfPqIndex| -> Vec<(u32, f32)> {
                let mut v: Vec<(u32, f32)> = i
                    .search(q, i.nlist(), n, |_| false)
                    .into_sorted()
                    .into_iter()
                    .map(|c| (c.key, c.distance))
                    .collect();
                v.sort_by_key(|p| p.0);
                v
            };
            let (new, legacy) = (all(&idx), all(&old));
            assert_eq!(new.len(), n, "every list probed returns every row");
            for ((r, d), (r2, d2)) in new.iter().zip(&legacy) {
                let r = *r as usize;
                let want = distance(Metric::L2, q, &decoded[r * dim..(r + 1) * dim]);
                let tol = 1e-3 * want.max(1.0);
                assert!((d - want).abs() <= tol, "row {r}: {d} against {want}");
                assert_eq!(r, *r2 as usize);
                assert!(
                    (d2 - want).abs() <= tol,
                    "old file, row {r}: {d2} against {want}"
                );
            }
        }
    }

    #[test]
    fn build_is_deterministic_and_damage_is_detected() {
        let (n, dim) = (1500, 8);
        let xs = data(n, dim, 3, false);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let p = IvfPqParams::for_data(n, dim, Some(16), Some(4), 8);
        build(a.path(), &xs, dim, Metric::L2, p).unwrap();
        build(b.path(), &xs, dim, Metric::L2, p).unwrap();
        let (c, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let p4 = IvfPqParams { bits: 4, ..p };
        build(c.path(), &xs, dim, Metric::L2, p4).unwrap();
        build(d.path(), &xs, dim, Metric::L2, p4).unwrap();
        assert_eq!(
            std::fs::read(c.path().join(FILE_NAME)).unwrap(),
            std::fs::read(d.path().join(FILE_NAME)).unwrap(),
            "4-bit: same seed, same bytes"
        );
        let fa = std::fs::read(a.path().join(FILE_NAME)).unwrap();
        assert_eq!(
            fa,
            std::fs::read(b.path().join(FILE_NAME)).unwrap(),
            "same seed, same bytes"
        );
        let mut damaged = fa.clone();
        damaged[200] ^= 1;
        std::fs::write(a.path().join(FILE_NAME), &damaged).unwrap();
        assert!(matches!(
            IvfPqIndex::open(a.path(), dim, Metric::L2, n),
            Err(Error::Corrupt { .. })
        ));
        assert!(
            matches!(
                IvfPqIndex::open(b.path(), dim, Metric::Cosine, n),
                Err(Error::Corrupt { .. })
            ),
            "metric mismatch"
        );
        assert!(
            IvfPqIndex::open(tempfile::tempdir().unwrap().path(), dim, Metric::L2, n)
                .unwrap()
                .is_none()
        );
    }
}
