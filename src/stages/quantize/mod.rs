//! `quantize`: the selected linear layers onto a low-bit grid (RTN, GPTQ), or int8 as PyTorch's
//! `quantize_dynamic` does.

mod read;
mod run;

use super::compress::{CalibrationMode, Selection};
use super::{Kind, ModelSize, StageCtx, StageError, StageOutput};
use crate::cache::key::{CacheKey, KeyWriter};
use crate::pipeline::fields::Fields;
use crate::pipeline::spec::InstanceRef;

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeSpec {
    pub model: InstanceRef,
    pub method: QuantMethod,
    pub selection: Selection,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QuantMethod {
    /// Round-to-nearest min-max, per output channel (`group_size: None`) or per group of columns.
    Rtn {
        bits: u32,
        group_size: Option<usize>,
        symmetric: bool,
    },
    /// RTN's grid with GPTQ's error feedback through the inverse Hessian.
    Gptq {
        bits: u32,
        group_size: Option<usize>,
        symmetric: bool,
        act_order: bool,
        percdamp: f64,
        blocksize: usize,
        calibration: InstanceRef,
        mode: CalibrationMode,
    },
    /// PyTorch `quantize_dynamic`: int8 weights per tensor, inputs quantized on every call.
    DynamicInt8,
}

impl QuantMethod {
    pub fn name(&self) -> &'static str {
        match self {
            QuantMethod::Rtn { .. } => "rtn",
            QuantMethod::Gptq { .. } => "gptq",
            QuantMethod::DynamicInt8 => "dynamic-int8",
        }
    }
}

/// The grid's settings as keys: `group_size` -1 for per-channel.
fn grid(key: &mut KeyWriter, bits: u32, group_size: Option<usize>, symmetric: bool) {
    key.put("bits", bits)
        .put("group_size", group_size.map_or(-1, |g| g as i64))
        .put("symmetric", symmetric);
}

impl CacheKey for QuantizeSpec {
    fn cache_key(&self, key: &mut KeyWriter) {
        key.put("method", self.method.name());
        match &self.method {
            QuantMethod::Rtn {
                bits,
                group_size,
                symmetric,
            } => grid(key, *bits, *group_size, *symmetric),
            QuantMethod::Gptq {
                bits,
                group_size,
                symmetric,
                act_order,
                percdamp,
                blocksize,
                mode,
                calibration: _,
            } => {
                grid(key, *bits, *group_size, *symmetric);
                key.put("act_order", *act_order)
                    .put("percdamp", *percdamp)
                    .put("blocksize", *blocksize)
                    .put("calibration_mode", *mode)
                    .put("factorization", crate::compress::FACTORIZATION);
            }
            QuantMethod::DynamicInt8 => {}
        }
        self.selection.cache_key(key);
    }
}

impl Kind for QuantizeSpec {
    const NAME: &'static str = "quantize";
    // 2: overlays are packed (`overlay/`), no longer one dense safetensors file.
    const VERSION: u32 = 2;
    const KEYS: &'static [&'static str] = &[
        "model",
        "method",
        "bits",
        "group_size",
        "symmetric",
        "act_order",
        "percdamp",
        "blocksize",
        "calibration",
        "calibration_mode",
        "modules",
        "targets",
        "ignore",
    ];
    // A `calibration:` the method ignores still counts: the method may be swept.
    const REF_KEYS: &'static [&'static str] = &["model", "calibration"];
    const ACCELERATED: bool = true;

    fn read(f: &mut Fields) -> Option<Self> {
        read::read(f)
    }

    fn inputs(&self) -> Vec<(String, InstanceRef)> {
        let mut v = vec![("model".into(), self.model)];
        if let QuantMethod::Gptq { calibration, .. } = &self.method {
            v.push(("calibration".into(), *calibration));
        }
        v
    }

    fn memory(&self, model: ModelSize) -> u64 {
        let calibrated = match &self.method {
            QuantMethod::Gptq { mode, .. } => Some((*mode, true)),
            _ => None,
        };
        super::compress::compress_memory(model, calibrated)
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput, StageError> {
        run::run(ctx, self)
    }
}
