//! Cache keys: a canonical, versioned encoding of everything that determines a stage's output.
//!
//! Keys are blake3 over a byte encoding in which every field is tagged and length-prefixed, maps are
//! ordered, and numbers have one spelling: `0.50`, `0.5` and `5e-1` in a pipeline file all encode the
//! same `f64`. The encoding is versioned ([`KEY_SCHEMA`]); bumping it invalidates every entry.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Version of the key encoding itself. Bump when [`KeyHasher`]'s byte format changes.
pub const KEY_SCHEMA: u32 = 1;

/// A blake3 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The first 12 hex digits: what people read in tables and logs.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Digest(out))
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// A parameter value as it enters a key: typed, so that one value has one encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<ParamValue>),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{}", canonical_float(*x)),
            ParamValue::Str(s) => write!(f, "{s}"),
            ParamValue::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl From<bool> for ParamValue {
    fn from(v: bool) -> Self {
        ParamValue::Bool(v)
    }
}
impl From<i64> for ParamValue {
    fn from(v: i64) -> Self {
        ParamValue::Int(v)
    }
}
impl From<usize> for ParamValue {
    fn from(v: usize) -> Self {
        ParamValue::Int(v as i64)
    }
}
impl From<u64> for ParamValue {
    fn from(v: u64) -> Self {
        ParamValue::Int(v as i64)
    }
}
impl From<f64> for ParamValue {
    fn from(v: f64) -> Self {
        ParamValue::Float(v)
    }
}
impl From<&str> for ParamValue {
    fn from(v: &str) -> Self {
        ParamValue::Str(v.to_string())
    }
}
impl From<String> for ParamValue {
    fn from(v: String) -> Self {
        ParamValue::Str(v)
    }
}

/// The canonical spelling of a float: shortest round-trip form, `-0` folded into `0`.
pub fn canonical_float(x: f64) -> String {
    let x = if x == 0.0 { 0.0 } else { x };
    let s = format!("{x:?}");
    s
}

/// A stage's parameters as they enter its key, ordered by name.
pub type Params = BTreeMap<String, ParamValue>;

/// A value as it enters a key: each type spells itself once, here or beside its definition.
pub trait KeyValue {
    fn key_value(&self) -> ParamValue;
}

macro_rules! key_value_from {
    ($($t:ty),*) => {$(
        impl KeyValue for $t {
            fn key_value(&self) -> ParamValue {
                ParamValue::from(self.clone())
            }
        }
    )*};
}
key_value_from!(bool, i64, u64, usize, f64, String);

impl KeyValue for u32 {
    fn key_value(&self) -> ParamValue {
        ParamValue::Int(i64::from(*self))
    }
}

impl KeyValue for str {
    fn key_value(&self) -> ParamValue {
        ParamValue::Str(self.to_string())
    }
}

impl KeyValue for ParamValue {
    fn key_value(&self) -> ParamValue {
        self.clone()
    }
}

impl<T: KeyValue + ?Sized> KeyValue for &T {
    fn key_value(&self) -> ParamValue {
        (**self).key_value()
    }
}

impl<T: KeyValue> KeyValue for [T] {
    fn key_value(&self) -> ParamValue {
        ParamValue::List(self.iter().map(KeyValue::key_value).collect())
    }
}

impl<T: KeyValue> KeyValue for Vec<T> {
    fn key_value(&self) -> ParamValue {
        self.as_slice().key_value()
    }
}

/// Implements [`KeyValue`] for types whose key spelling is their `as_str()`.
#[macro_export]
macro_rules! key_value_as_str {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::cache::key::KeyValue for $t {
            fn key_value(&self) -> $crate::cache::key::ParamValue {
                $crate::cache::key::ParamValue::Str(self.as_str().to_string())
            }
        }
    )*};
}

/// What a stage's spec contributes to its cache key, decided by the type itself (as uv's
/// `CacheKey` does): exactly the settings that can change the output, and nothing that only
/// changes how it is computed.
pub trait CacheKey {
    fn cache_key(&self, key: &mut KeyWriter);
}

/// Collects the named parameters of a key.
#[derive(Debug, Default)]
pub struct KeyWriter {
    params: Params,
}

impl KeyWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, name: impl Into<String>, value: impl KeyValue) -> &mut Self {
        self.params.insert(name.into(), value.key_value());
        self
    }

    /// Writes the value when there is one: settings added later stay out of the keys of stages
    /// that leave them unset.
    pub fn put_some<V: KeyValue>(
        &mut self,
        name: impl Into<String>,
        value: Option<V>,
    ) -> &mut Self {
        if let Some(v) = value {
            self.put(name, v);
        }
        self
    }

    pub fn has(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    pub fn finish(self) -> Params {
        self.params
    }
}

/// The key parameters of a value.
pub fn params_of(value: &(impl CacheKey + ?Sized)) -> Params {
    let mut w = KeyWriter::new();
    value.cache_key(&mut w);
    w.finish()
}

/// Everything that determines a stage's output. Its digest is the stage's cache key.
///
/// `inputs` holds, per input role, the *content* digest of what that input produced, so identical
/// outputs reached by different routes lead to the same downstream keys (early cutoff).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub kind: String,
    /// The stage kind's algorithm version: bumped when its implementation changes its output.
    pub version: u32,
    pub params: Params,
    pub inputs: BTreeMap<String, Digest>,
    /// Files read directly by the stage (checkpoints, datasets), by role, with their content hash.
    pub files: BTreeMap<String, Digest>,
}

impl KeyInputs {
    pub fn new(kind: &str, version: u32) -> Self {
        KeyInputs {
            kind: kind.to_string(),
            version,
            params: Params::new(),
            inputs: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    pub fn digest(&self) -> Digest {
        let mut h = KeyHasher::new();
        h.u32(KEY_SCHEMA);
        h.str(&self.kind);
        h.u32(self.version);
        h.params(&self.params);
        h.digest_map(&self.inputs);
        h.digest_map(&self.files);
        h.finish()
    }

    /// Human-readable differences from `old`, one line each ("params.sparsity: 0.3 → 0.4").
    pub fn diff(&self, old: &KeyInputs) -> Vec<String> {
        let mut out = Vec::new();
        if self.kind != old.kind {
            out.push(format!("kind: {} → {}", old.kind, self.kind));
        }
        if self.version != old.version {
            out.push(format!(
                "algorithm version of `{}`: {} → {}",
                self.kind, old.version, self.version
            ));
        }
        diff_maps("params", &old.params, &self.params, &mut out, |v| {
            v.to_string()
        });
        diff_maps("input", &old.inputs, &self.inputs, &mut out, |d| d.short());
        diff_maps("file", &old.files, &self.files, &mut out, |d| d.short());
        out
    }
}

fn diff_maps<V: PartialEq>(
    what: &str,
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    out: &mut Vec<String>,
    show: impl Fn(&V) -> String,
) {
    for (k, v) in new {
        match old.get(k) {
            None => out.push(format!("{what} `{k}` added: {}", show(v))),
            Some(o) if o != v => {
                out.push(format!("{what} `{k}` changed: {} → {}", show(o), show(v)))
            }
            Some(_) => {}
        }
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            out.push(format!("{what} `{k}` removed (was {})", show(v)));
        }
    }
}

/// Builds a canonical byte encoding and hashes it. Every item is tagged and length-prefixed, so no
/// two different sequences of items share an encoding.
pub struct KeyHasher {
    inner: blake3::Hasher,
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyHasher {
    pub fn new() -> Self {
        KeyHasher {
            inner: blake3::Hasher::new(),
        }
    }

    fn tag(&mut self, t: u8) {
        self.inner.update(&[t]);
    }

    pub fn u32(&mut self, v: u32) {
        self.tag(b'u');
        self.inner.update(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.tag(b'U');
        self.inner.update(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.tag(b'b');
        self.inner.update(&(b.len() as u64).to_le_bytes());
        self.inner.update(b);
    }

    pub fn str(&mut self, s: &str) {
        self.tag(b's');
        self.inner.update(&(s.len() as u64).to_le_bytes());
        self.inner.update(s.as_bytes());
    }

    pub fn digest(&mut self, d: &Digest) {
        self.tag(b'd');
        self.inner.update(&d.0);
    }

    pub fn value(&mut self, v: &ParamValue) {
        match v {
            ParamValue::Bool(b) => {
                self.tag(b'B');
                self.inner.update(&[*b as u8]);
            }
            ParamValue::Int(i) => {
                self.tag(b'I');
                self.inner.update(&i.to_le_bytes());
            }
            ParamValue::Float(x) => {
                self.tag(b'F');
                let s = canonical_float(*x);
                self.str(&s);
            }
            ParamValue::Str(s) => {
                self.tag(b'S');
                self.str(s);
            }
            ParamValue::List(items) => {
                self.tag(b'L');
                self.inner.update(&(items.len() as u64).to_le_bytes());
                for it in items {
                    self.value(it);
                }
            }
        }
    }

    pub fn params(&mut self, p: &Params) {
        self.tag(b'P');
        self.inner.update(&(p.len() as u64).to_le_bytes());
        for (k, v) in p {
            self.str(k);
            self.value(v);
        }
    }

    pub fn digest_map(&mut self, m: &BTreeMap<String, Digest>) {
        self.tag(b'M');
        self.inner.update(&(m.len() as u64).to_le_bytes());
        for (k, d) in m {
            self.str(k);
            self.digest(d);
        }
    }

    pub fn finish(self) -> Digest {
        Digest(*self.inner.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyInputs {
        let mut k = KeyInputs::new("prune", 1);
        k.params.insert("method".into(), "wanda".into());
        k.params.insert("sparsity".into(), 0.5.into());
        k.inputs.insert("model".into(), Digest::of_bytes(b"model"));
        k.files.insert("data".into(), Digest::of_bytes(b"data"));
        k
    }

    /// Golden key: a change to the encoding shows up here as a diff, on purpose.
    #[test]
    fn golden_key() {
        assert_eq!(
            sample().digest().hex(),
            "dc93c408bfd97c38224dcbb31752b930d4a59ed7406f7fac8e44084315b6b2ee",
            "the key encoding changed: bump KEY_SCHEMA and update this value"
        );
    }

    #[test]
    fn float_spelling_is_canonical() {
        let a: f64 = "0.50".parse().unwrap();
        let b: f64 = "5e-1".parse().unwrap();
        assert_eq!(canonical_float(a), canonical_float(b));
        assert_eq!(canonical_float(-0.0), canonical_float(0.0));
        assert_eq!(canonical_float(0.1), "0.1");
    }

    #[test]
    fn every_component_changes_the_key() {
        let base = sample().digest();
        let mut k = sample();
        k.version = 2;
        assert_ne!(k.digest(), base);
        let mut k = sample();
        k.params.insert("sparsity".into(), 0.4.into());
        assert_ne!(k.digest(), base);
        let mut k = sample();
        k.inputs.insert("model".into(), Digest::of_bytes(b"other"));
        assert_ne!(k.digest(), base);
        let mut k = sample();
        k.files.clear();
        assert_ne!(k.digest(), base);
        // An int and a float of the same value are different parameters.
        let mut a = KeyInputs::new("x", 1);
        a.params.insert("n".into(), ParamValue::Int(1));
        let mut b = KeyInputs::new("x", 1);
        b.params.insert("n".into(), ParamValue::Float(1.0));
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn adjacent_strings_do_not_collide() {
        let mut a = KeyInputs::new("x", 1);
        a.params.insert("ab".into(), "c".into());
        let mut b = KeyInputs::new("x", 1);
        b.params.insert("a".into(), "bc".into());
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn diff_names_what_changed() {
        let old = sample();
        let mut new = sample();
        new.params.insert("sparsity".into(), 0.4.into());
        let d = new.diff(&old);
        assert_eq!(d, vec!["params `sparsity` changed: 0.5 → 0.4".to_string()]);
    }

    #[test]
    fn hex_roundtrip() {
        let d = Digest::of_bytes(b"abc");
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
        assert_eq!(d.short().len(), 12);
    }
}
