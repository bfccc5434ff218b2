//! The kernels' typed errors. Kernels do not know layer names: callers add them.

/// Why a compression kernel refused its inputs.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("sparsity {0} is outside [0, 1): pass a fraction such as 0.5 for 50%")]
    Sparsity(f64),
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        what: &'static str,
        expected: (usize, usize),
        got: (usize, usize),
    },
    #[error("matrix data has {len} values but {rows}x{cols} needs {}", rows * cols)]
    DataLength {
        rows: usize,
        cols: usize,
        len: usize,
    },
    #[error("a weight matrix must have rank 2 (out_features x in_features), got shape {0:?}")]
    Rank(Vec<usize>),
    #[error("N:M pattern {n}:{m} is invalid: need 0 < N < M")]
    NmPattern { n: usize, m: usize },
    #[error("N:M pattern {n}:{m} needs in_features ({cols}) to be a multiple of {m}")]
    NmWidth { n: usize, m: usize, cols: usize },
    #[error("{bits}-bit quantization is unsupported: use 2..=8 bits")]
    Bits { bits: u32 },
    #[error("group size must be at least 1 (use per-channel grouping for one group per row)")]
    GroupSize,
    #[error("{what} has {got} entries but the weight has {expected} input columns")]
    StatLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what}[{index}] = {value}: calibration statistics must be finite and non-negative")]
    BadStat {
        what: &'static str,
        index: usize,
        value: f64,
    },
    #[error("weight value at ({row}, {col}) is {value}: quantization needs finite weights")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("global magnitude pruning needs at least one matrix")]
    NoMatrices,
    #[error(
        "the damped Hessian is not positive definite (pivot {index} = {value}): \
         collect more calibration tokens or raise the damping"
    )]
    NotPositiveDefinite { index: usize, value: f64 },
    #[error("damping fraction {0} must be finite and non-negative (the reference uses 0.01)")]
    Damping(f64),
    #[error("block size {0} is invalid: use a positive size (the reference uses 128)")]
    BlockSize(usize),
    #[error("block size {blocksize} is not a multiple of the N:M group size {m}")]
    BlockNm { blocksize: usize, m: usize },
    #[error("mask bytes are not a valid mask: {0}")]
    MaskBytes(&'static str),
    #[error("input has {len} values, not a multiple of in_features ({cols})")]
    InputLength { len: usize, cols: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
