//! The keys of a `quantize` stage: the method, its grid and what it needs, and the selection.

use super::{QuantMethod, QuantizeSpec};
use crate::cache::key::ParamValue;
use crate::pipeline::fields::Fields;
use crate::stages::calibrate::Statistic;
use crate::stages::compress::read::*;

const QUANT_METHODS: [&str; 3] = ["rtn", "gptq", "dynamic-int8"];

/// `group_size:` ≥ 1, or -1 (the default) for one group per output channel.
fn group_size(f: &mut Fields) -> Option<usize> {
    let (n, o) = f.get("group_size")?;
    match n.value() {
        Some(ParamValue::Int(-1)) => None,
        Some(ParamValue::Int(g)) if g >= 1 => Some(g as usize),
        _ => {
            let e = "an integer ≥ 1, or -1 for per-channel";
            let msg = format!("expected {e}, found {}", n.describe());
            f.fail("group_size", &n, &o, msg, Some(e), None);
            None
        }
    }
}

pub(super) fn read(f: &mut Fields) -> Option<QuantizeSpec> {
    let model = f.model_ref();
    let method = chosen(f, &QUANT_METHODS, Some("rtn"));
    let calibration = calibration(f);
    let mode = calibration_mode(f);
    let bits = f.int("bits", 2, 8, BITS).map(|b| b as u32);
    let group_size = group_size(f);
    let symmetric = f.boolean("symmetric").unwrap_or(false);
    let act_order = f.boolean("act_order").unwrap_or(false);
    let percdamp = percdamp(f);
    let blocksize = blocksize(f);
    let selection = selection(f);
    let method = method?;
    if method.name == "dynamic-int8" {
        let keys = ["bits", "group_size", "symmetric", "act_order"];
        not_taken(f, &method, &keys, &|k| {
            format!("dynamic-int8 takes no `{k}`: weights are int8 per tensor")
        });
    } else if !f.has("bits") {
        f.missing("bits", &format!("add `bits:` with {BITS}"));
    }
    if method.name == "rtn" {
        only_used_by(f, &method, &["act_order"], "gptq");
    }
    if method.name != "gptq" {
        only_used_by(f, &method, &["percdamp", "blocksize"], "sparsegpt/gptq");
    }
    let gptq_calibration = match method.name {
        "gptq" => Some(required_calibration(
            f,
            &method,
            calibration,
            mode,
            Statistic::Hessian,
        )),
        _ => None,
    };
    let method = match method.name {
        "dynamic-int8" => QuantMethod::DynamicInt8,
        "rtn" => QuantMethod::Rtn {
            bits: bits?,
            group_size,
            symmetric,
        },
        _ => QuantMethod::Gptq {
            bits: bits?,
            group_size,
            symmetric,
            act_order,
            percdamp,
            blocksize,
            calibration: gptq_calibration.flatten()?,
            mode,
        },
    };
    Some(QuantizeSpec {
        model: model?,
        method,
        selection,
    })
}
