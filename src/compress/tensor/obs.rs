//! SparseGPT and GPTQ on the device: the column loop with error feedback, blocks of columns with
//! a lazy update between them (one matrix product per block).

use candle_core::{DType, Device, Tensor};

use super::nm::nm_flags;
use super::quant::{self, Params};
use super::select::{at_or_below, mask_of, rank_value};
use crate::compress::gptq::{act_order, group_index, GptqConfig, GptqOutput};
use crate::compress::hessian::{prepare, Prepared};
use crate::compress::rtn::{Grouping, QuantizedMatrix};
use crate::compress::sparsegpt::{untouched, Pattern, SparseGptOutput};
use crate::compress::{prune_count, HessianOpts, Matrix, Result};

/// What one method does to each column: its new values (`rows × 1`) from the block being worked
/// on (`w1`, updated column by column) and the columns not yet done as they stood at the block's
/// start (`rest`, block first).
trait ColumnRule {
    fn block(&mut self, w1: &Tensor, d2: &Tensor) -> Result<()>;
    fn column(
        &mut self,
        w1: &Tensor,
        rest: &Tensor,
        d2: &Tensor,
        i: usize,
        c: usize,
    ) -> Result<Tensor>;
}

/// Runs `rule` over every column of `w` (processing order, dead columns already zeroed) with the
/// factor `hinv`; returns the new weight and the reference's loss.
fn column_loop(
    w: Tensor,
    hinv: &Prepared,
    blocksize: usize,
    rule: &mut impl ColumnRule,
) -> Result<(Tensor, f64)> {
    let (rows, cols) = w.dims2()?;
    let device = w.device().clone();
    let u = Tensor::from_slice(&hinv.u, (cols, cols), &device)?;
    let mut rest = w;
    let mut blocks = Vec::with_capacity(cols.div_ceil(blocksize));
    let mut losses = Vec::with_capacity(cols);
    for i1 in (0..cols).step_by(blocksize) {
        let i2 = (i1 + blocksize).min(cols);
        let count = i2 - i1;
        let diag: Vec<f32> = (i1..i2).map(|c| hinv.at(c, c)).collect();
        let d = Tensor::from_slice(&diag, (1, count), &device)?;
        let d2 = d.sqr()?;
        let u_block = u.narrow(0, i1, count)?.narrow(1, i1, count)?;
        let mut w1 = rest.narrow(1, 0, count)?;
        rule.block(&w1, &d2)?;
        let mut qs = Vec::with_capacity(count);
        let mut errs = Vec::with_capacity(count);
        for i in 0..count {
            let col = w1.narrow(1, i, 1)?;
            let q = rule.column(&w1, &rest, &d2, i, i1 + i)?;
            let diff = (&col - &q)?;
            losses.push(diff.sqr()?.broadcast_div(&d2.narrow(1, i, 1)?)?.sum_all()?);
            let err = diff.broadcast_div(&d.narrow(1, i, 1)?)?;
            if i + 1 < count {
                // U is upper triangular: the columns already done are left as they were.
                w1 = (w1 - err.broadcast_mul(&u_block.narrow(0, i, 1)?)?)?;
            }
            qs.push(q);
            errs.push(err);
        }
        blocks.push(Tensor::cat(&qs, 1)?);
        if i2 < cols {
            let err = Tensor::cat(&errs, 1)?;
            let ahead = u
                .narrow(0, i1, count)?
                .narrow(1, i2, cols - i2)?
                .contiguous()?;
            rest = (rest.narrow(1, count, cols - i2)? - err.matmul(&ahead)?)?;
        }
    }
    let loss = match losses.len() {
        0 => 0.0,
        _ => Tensor::stack(&losses, 0)?
            .to_vec1::<f32>()?
            .iter()
            .map(|&l| f64::from(l))
            .sum(),
    };
    let weight = match blocks.len() {
        0 => Tensor::zeros((rows, 0), DType::F32, &device)?,
        _ => Tensor::cat(&blocks, 1)?,
    };
    Ok((weight, loss / 2.0))
}

/// `w` on the device with the columns `dead` set to zero.
fn without_dead(w: &Tensor, dead: impl Fn(usize) -> bool) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let keep: Vec<u8> = (0..cols).map(|c| u8::from(!dead(c))).collect();
    let keep = Tensor::from_vec(keep, (1, cols), w.device())?.broadcast_as((rows, cols))?;
    Ok(keep.where_cond(w, &w.zeros_like()?)?)
}

/// SparseGPT's column rule: pruned entries become zero; the mask is chosen per block
/// (unstructured) or every `m` columns (N:M) from the current weights.
struct Prune {
    pattern: Pattern,
    flags: Option<Tensor>,
    chosen: Vec<Tensor>,
}

impl ColumnRule for Prune {
    fn block(&mut self, w1: &Tensor, d2: &Tensor) -> Result<()> {
        if let Pattern::Unstructured(s) = self.pattern {
            let scores = w1.sqr()?.broadcast_div(d2)?;
            let k = prune_count(scores.elem_count(), s)?;
            self.flags = Some(at_or_below(&scores, rank_value(&scores, k)?)?);
        }
        Ok(())
    }

    fn column(
        &mut self,
        w1: &Tensor,
        _: &Tensor,
        d2: &Tensor,
        i: usize,
        _: usize,
    ) -> Result<Tensor> {
        let pruned = match self.pattern {
            Pattern::Unstructured(_) => self
                .flags
                .as_ref()
                .expect("set per block")
                .narrow(1, i, 1)?,
            Pattern::NM { n, m } => {
                if i.is_multiple_of(m) {
                    let scores = w1
                        .narrow(1, i, m)?
                        .sqr()?
                        .broadcast_div(&d2.narrow(1, i, m)?)?;
                    self.flags = Some(nm_flags(&scores, n, m)?);
                }
                self.flags
                    .as_ref()
                    .expect("set at i % m == 0")
                    .narrow(1, i % m, 1)?
            }
        };
        let col = w1.narrow(1, i, 1)?;
        let q = pruned.where_cond(&col.zeros_like()?, &col)?;
        self.chosen.push(pruned);
        Ok(q)
    }
}

/// SparseGPT with the column loop on `device`.
pub(super) fn sparsegpt(
    w: &Matrix,
    h: &Matrix,
    pattern: Pattern,
    opts: &HessianOpts,
    device: &Device,
) -> Result<SparseGptOutput> {
    if let Some(done) = untouched(w, pattern, opts)? {
        return Ok(done);
    }
    let hinv = prepare(h, w.cols, opts, None)?;
    let start = without_dead(&w.to_tensor(device)?, |c| hinv.dead.contains(&c))?;
    let mut rule = Prune {
        pattern,
        flags: None,
        chosen: Vec::with_capacity(w.cols),
    };
    let (weight, loss) = column_loop(start, &hinv, opts.blocksize, &mut rule)?;
    Ok(SparseGptOutput {
        weight: Matrix::from_tensor(&weight)?,
        mask: mask_of(&Tensor::cat(&rule.chosen, 1)?)?,
        loss,
    })
}

/// GPTQ's column rule: each column rounded onto its group's grid; with groups, the parameters
/// come from the group's columns as they stood at the start of the current block.
struct Quantize {
    maxq: f32,
    sym: bool,
    group: Option<usize>,
    current: Option<Params>,
    params: Vec<Params>,
    codes: Vec<Tensor>,
}

impl ColumnRule for Quantize {
    fn block(&mut self, _: &Tensor, _: &Tensor) -> Result<()> {
        Ok(())
    }

    fn column(
        &mut self,
        w1: &Tensor,
        rest: &Tensor,
        _: &Tensor,
        i: usize,
        c: usize,
    ) -> Result<Tensor> {
        if let Some(g) = self.group.filter(|g| c.is_multiple_of(*g)) {
            let width = g.min(rest.dim(1)? - i);
            let p = quant::find_params(&rest.narrow(1, i, width)?, self.maxq, self.sym)?;
            self.params.push(p.clone());
            self.current = Some(p);
        }
        let p = self.current.as_ref().expect("a group starts at column 0");
        let code = quant::codes(&w1.narrow(1, i, 1)?, p, self.maxq)?;
        let q = quant::values(&code, p)?;
        self.codes.push(code);
        Ok(q)
    }
}

/// GPTQ with the column loop on `device`.
pub(super) fn gptq(
    w: &Matrix,
    h: &Matrix,
    cfg: &GptqConfig,
    device: &Device,
) -> Result<GptqOutput> {
    let qc = &cfg.quant;
    qc.validate()?;
    w.check_finite()?;
    let (rows, cols) = w.shape();
    h.expect_shape("hessian", cols, cols)?;
    let maxq = qc.maxq();
    let original = w.to_tensor(device)?;
    let per_channel = qc.grouping == Grouping::PerChannel;
    let fixed = match per_channel {
        true => Some(quant::find_params(&original, maxq, qc.sym)?),
        false => None,
    };
    let perm = cfg.act_order.then(|| act_order(h));
    let hinv = prepare(h, cols, &cfg.hessian, perm.as_deref())?;
    let at = |p: usize| perm.as_ref().map_or(p, |pm| pm[p]);
    let ordered = match &perm {
        Some(p) => {
            let idx: Vec<u32> = p.iter().map(|&c| c as u32).collect();
            original.index_select(&Tensor::from_vec(idx, cols, device)?, 1)?
        }
        None => original,
    };
    let start = without_dead(&ordered, |p| hinv.dead.contains(&at(p)))?;
    let g = qc.group_size(cols);
    let mut rule = Quantize {
        maxq,
        sym: qc.sym,
        group: (!per_channel).then_some(g),
        current: fixed.clone(),
        params: fixed.into_iter().collect(),
        codes: Vec::with_capacity(cols),
    };
    let (_, loss) = column_loop(start, &hinv, cfg.hessian.blocksize, &mut rule)?;
    let in_order = match rule.codes.len() {
        0 => Vec::new(),
        _ => Tensor::cat(&rule.codes, 1)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?,
    };
    let mut codes = vec![0u8; rows * cols];
    for r in 0..rows {
        for p in 0..cols {
            codes[r * cols + at(p)] = in_order[r * cols + p];
        }
    }
    let (scales, zeros) = match rule.params.len() {
        0 => (Vec::new(), Vec::new()),
        _ => quant::stack_params(&rule.params)?,
    };
    Ok(GptqOutput {
        quantized: QuantizedMatrix {
            rows,
            cols,
            bits: qc.bits,
            sym: qc.sym,
            group_size: g,
            codes,
            scales,
            zeros,
            group_index: group_index(perm.as_deref(), per_channel, g),
        },
        loss,
    })
}
