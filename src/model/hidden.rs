//! The hidden states of every batch at one block boundary, for a model run layer-wise (all
//! batches through block i before block i + 1): in memory when they fit the stage's allowance
//! for them, otherwise one file per batch in the cache's `tmp/`, rewritten after every block.
//! A file holds the tensor's exact bytes, so spilling never changes a number.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::error::{ModelError, Result};

/// Where a stage's log lines go.
pub type Note = Arc<dyn Fn(&str) + Send + Sync>;

/// How much of a stage's memory hidden states may take, where they go when they take more, and
/// where to say which happened.
#[derive(Clone)]
pub struct SpillPolicy {
    /// Bytes of hidden states kept in memory at most.
    pub budget: u64,
    /// The directory spill folders are made in (the cache's `tmp/`).
    pub dir: PathBuf,
    pub note: Note,
}

impl std::fmt::Debug for SpillPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillPolicy")
            .field("budget", &self.budget)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

enum Slot {
    Held(Tensor),
    Spilled,
    Taken,
}

/// A folder named like the cache's other `tmp/` items (`spill-<pid>-<random>`), so that `gc`
/// leaves it alone while this process runs; removed when dropped.
struct SpillDir(PathBuf);

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The hidden states of a layer-wise pass, batch by batch.
pub struct HiddenStates {
    slots: Vec<Slot>,
    spill: Option<SpillDir>,
    device: Device,
}

impl HiddenStates {
    /// Room for hidden states totalling `bytes`, spilled when `policy` allows less; `what` names
    /// the pass in the log line.
    pub fn new(
        policy: Option<&SpillPolicy>,
        bytes: u64,
        device: &Device,
        what: &str,
    ) -> Result<Self> {
        let spill = match policy {
            Some(p) if bytes > p.budget => {
                let dir = p.dir.join(format!(
                    "spill-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&dir).map_err(|source| ModelError::Spill {
                    path: dir.clone(),
                    source,
                })?;
                (p.note)(&format!(
                    "{what}: hidden states of every batch ({:.1} MB) exceed the {:.1} MB allowed \
                     for them: kept in {} between blocks",
                    bytes as f64 / 1e6,
                    p.budget as f64 / 1e6,
                    dir.display()
                ));
                Some(SpillDir(dir))
            }
            Some(p) => {
                (p.note)(&format!(
                    "{what}: hidden states of every batch ({:.1} MB) kept in memory between \
                     blocks (up to {:.1} MB allowed)",
                    bytes as f64 / 1e6,
                    p.budget as f64 / 1e6
                ));
                None
            }
            None => None,
        };
        Ok(Self {
            slots: Vec::new(),
            spill,
            device: device.clone(),
        })
    }

    /// Whether the states live in files.
    pub fn is_spilled(&self) -> bool {
        self.spill.is_some()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds batch `len()`'s states.
    pub fn push(&mut self, x: Tensor) -> Result<()> {
        self.slots.push(Slot::Taken);
        self.put(self.slots.len() - 1, x)
    }

    /// Batch `i`'s states; until [`HiddenStates::put`] gives them back, only the caller has them.
    pub fn take(&mut self, i: usize) -> Result<Tensor> {
        let x = self.get(i)?;
        self.slots[i] = Slot::Taken;
        Ok(x)
    }

    /// A copy of batch `i`'s states, which stay stored.
    pub fn get(&self, i: usize) -> Result<Tensor> {
        match &self.slots[i] {
            Slot::Held(x) => Ok(x.clone()),
            Slot::Spilled => {
                let path = self.path(i);
                let mut map = candle_core::safetensors::load(&path, &self.device)?;
                map.remove("x").ok_or_else(|| {
                    ModelError::Invalid(format!("{}: no tensor `x`", path.display()))
                })
            }
            Slot::Taken => Err(ModelError::Invalid(format!(
                "hidden states of batch {i} were taken and not put back"
            ))),
        }
    }

    /// Stores batch `i`'s states.
    pub fn put(&mut self, i: usize, x: Tensor) -> Result<()> {
        self.slots[i] = match &self.spill {
            None => Slot::Held(x),
            Some(_) => {
                let path = self.path(i);
                x.save_safetensors("x", &path)?;
                Slot::Spilled
            }
        };
        Ok(())
    }

    /// Runs `f` on every batch's states in turn, storing what it returns in their place.
    pub fn update(&mut self, mut f: impl FnMut(usize, &Tensor) -> Result<Tensor>) -> Result<()> {
        for i in 0..self.len() {
            let x = self.take(i)?;
            let y = f(i, &x)?;
            drop(x);
            self.put(i, y)?;
        }
        Ok(())
    }

    fn path(&self, i: usize) -> PathBuf {
        let dir: &Path = &self
            .spill
            .as_ref()
            .expect("only spilled states have files")
            .0;
        dir.join(format!("{i:06}.safetensors"))
    }
}

/// A model whose layer-wise passes follow `policy` (its traits are [`crate::model::Blocks`] and the kinds of language model).
pub struct Spilling<M: ?Sized> {
    pub policy: SpillPolicy,
    pub inner: Box<M>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(budget: u64, dir: &Path, lines: Arc<std::sync::Mutex<Vec<String>>>) -> SpillPolicy {
        SpillPolicy {
            budget,
            dir: dir.to_path_buf(),
            note: Arc::new(move |l| lines.lock().unwrap().push(l.to_string())),
        }
    }

    #[test]
    fn spilled_states_come_back_bit_for_bit_and_the_folder_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let xs: Vec<Tensor> = (0..3)
            .map(|i| Tensor::rand(-1f32, 1.0, (2, 5, 4), &Device::Cpu).unwrap() * i as f64)
            .collect::<Result<_, _>>()
            .unwrap();
        let p = policy(100, tmp.path(), lines.clone());
        let mut h = HiddenStates::new(Some(&p), 480, &Device::Cpu, "test").unwrap();
        assert!(h.is_spilled());
        for x in &xs {
            h.push(x.clone()).unwrap();
        }
        h.update(|_, x| Ok((x * 2.0)?)).unwrap();
        for (i, x) in xs.iter().enumerate() {
            let back = h.take(i).unwrap();
            let want = (x * 2.0).unwrap();
            assert_eq!(
                back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(lines.lock().unwrap()[0].contains("kept in"));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        drop(h);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let held = HiddenStates::new(Some(&p), 50, &Device::Cpu, "test").unwrap();
        assert!(!held.is_spilled());
        assert!(lines.lock().unwrap()[1].contains("kept in memory"));
    }
}
