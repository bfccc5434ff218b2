//! The device pool: concrete devices with memory, handed to stages without oversubscribing.

use std::fmt;

/// A device by name: `cpu`, `cuda:N`, or `cuda` for `cuda:0` (as torch reads it). The one
/// parser of device names ([`DeviceKind::parse`]); a job carries it as that name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceKind {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected `cpu` or `cuda:N` (e.g. --devices cpu,cuda:0)")]
    Unknown(String),
    #[error("`{0}` needs a build with CUDA: cargo build --release --features cuda")]
    NoCuda(String),
    #[error("cannot open {device}: {source}")]
    Open {
        device: String,
        source: candle_core::Error,
    },
    #[error("--devices lists no device")]
    Empty,
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceKind {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Self, DeviceError> {
        DeviceKind::parse(&s)
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        DeviceKind::parse(s)
    }
}

impl DeviceKind {
    pub fn parse(s: &str) -> Result<Self, DeviceError> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(DeviceKind::Cpu);
        }
        let idx = s
            .strip_prefix("cuda:")
            .or_else(|| (s == "cuda").then_some("0"))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| DeviceError::Unknown(s.to_string()))?;
        if cfg!(feature = "cuda") {
            Ok(DeviceKind::Cuda(idx))
        } else {
            Err(DeviceError::NoCuda(s.to_string()))
        }
    }

    pub fn open(self) -> Result<candle_core::Device, DeviceError> {
        match self {
            DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
            DeviceKind::Cuda(i) => {
                candle_core::Device::new_cuda(i).map_err(|source| DeviceError::Open {
                    device: self.to_string(),
                    source,
                })
            }
        }
    }

    /// Total memory in bytes: available RAM for the CPU, the card's memory for a GPU.
    pub fn total_memory(self) -> u64 {
        match self {
            DeviceKind::Cpu => cpu_available_memory().unwrap_or(8 << 30),
            DeviceKind::Cuda(i) => cuda_memory(i).unwrap_or(16 << 30),
        }
    }
}

fn cpu_available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The card's total memory, as the driver reports it.
fn cuda_memory(index: usize) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            &index.to_string(),
        ])
        .output()
        .ok()?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib << 20)
}

/// What a stage asks of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// Whether an accelerator helps (otherwise the stage is given the CPU).
    pub accelerated: bool,
    /// Estimated peak memory in bytes.
    pub memory: u64,
}

#[derive(Debug)]
struct Slot {
    kind: DeviceKind,
    total: u64,
    reserved: u64,
    running: usize,
}

/// Devices and what is reserved on each.
#[derive(Debug)]
pub struct DevicePool {
    slots: Vec<Slot>,
}

impl DevicePool {
    pub fn new(kinds: &[DeviceKind]) -> Result<Self, DeviceError> {
        if kinds.is_empty() {
            return Err(DeviceError::Empty);
        }
        let mut slots: Vec<Slot> = Vec::new();
        for k in kinds {
            if slots.iter().any(|s| s.kind == *k) {
                continue;
            }
            slots.push(Slot {
                kind: *k,
                total: k.total_memory(),
                reserved: 0,
                running: 0,
            });
        }
        Ok(DevicePool { slots })
    }

    #[cfg(test)]
    fn with_memory(slots: &[(DeviceKind, u64)]) -> Self {
        DevicePool {
            slots: slots
                .iter()
                .map(|(kind, total)| Slot {
                    kind: *kind,
                    total: *total,
                    reserved: 0,
                    running: 0,
                })
                .collect(),
        }
    }

    pub fn kinds(&self) -> Vec<DeviceKind> {
        self.slots.iter().map(|s| s.kind).collect()
    }

    fn eligible(&self, need: &Need) -> impl Iterator<Item = usize> + '_ {
        let has_gpu = self.slots.iter().any(|s| s.kind != DeviceKind::Cpu);
        let accelerated = need.accelerated;
        (0..self.slots.len()).filter(move |&i| {
            let gpu = self.slots[i].kind != DeviceKind::Cpu;
            // Accelerated work goes to GPUs when there are any; the rest to the CPU (or, with
            // no CPU in the pool, anywhere).
            if accelerated && has_gpu {
                gpu
            } else {
                !gpu || !self.slots.iter().any(|s| s.kind == DeviceKind::Cpu)
            }
        })
    }

    /// Reserves a device for `need`: the eligible one with the most free memory that fits.
    /// A stage larger than a whole device may still run there, but only alone.
    pub fn acquire(&mut self, need: &Need) -> Option<(usize, u64)> {
        let best = self
            .eligible(need)
            .filter(|&i| {
                let s = &self.slots[i];
                let mem = need.memory.min(s.total);
                s.reserved + mem <= s.total
            })
            .max_by_key(|&i| self.slots[i].total - self.slots[i].reserved)?;
        let s = &mut self.slots[best];
        let mem = need.memory.min(s.total);
        s.reserved += mem;
        s.running += 1;
        Some((best, mem))
    }

    pub fn release(&mut self, slot: usize, reserved: u64) {
        let s = &mut self.slots[slot];
        s.reserved -= reserved;
        s.running -= 1;
    }

    pub fn kind(&self, slot: usize) -> DeviceKind {
        self.slots[slot].kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    #[test]
    fn parse_devices() {
        assert_eq!(DeviceKind::parse("cpu").unwrap(), DeviceKind::Cpu);
        assert_eq!(DeviceKind::parse(" cpu ").unwrap(), DeviceKind::Cpu);
        for bad in ["tpu:0", "gpu", "cuda:x", "cuda:-1", "cuda:", "", "CPU"] {
            let e = DeviceKind::parse(bad).unwrap_err();
            assert!(matches!(e, DeviceError::Unknown(_)), "{bad}: {e:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "unknown device `{bad}`: expected `cpu` or `cuda:N` (e.g. --devices cpu,cuda:0)"
                )
            );
        }
        // A bare `cuda` is `cuda:0`, as torch reads it.
        for (name, index) in [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)] {
            match DeviceKind::parse(name) {
                Ok(d) if cfg!(feature = "cuda") => assert_eq!(d, DeviceKind::Cuda(index)),
                Ok(d) => panic!("{name}: {d} without CUDA"),
                Err(e) => {
                    assert!(matches!(e, DeviceError::NoCuda(_)), "{name}: {e:?}");
                    assert_eq!(
                        e.to_string(),
                        format!("`{name}` needs a build with CUDA: cargo build --release --features cuda")
                    );
                }
            }
        }
    }

    #[test]
    fn a_device_travels_as_its_name() {
        let json = serde_json::to_string(&DeviceKind::Cpu).unwrap();
        assert_eq!(json, "\"cpu\"");
        assert_eq!(
            serde_json::from_str::<DeviceKind>(&json).unwrap(),
            DeviceKind::Cpu
        );
        assert!(serde_json::from_str::<DeviceKind>("\"tpu\"").is_err());
    }

    #[test]
    fn memory_is_never_oversubscribed() {
        let mut pool = DevicePool::with_memory(&[(DeviceKind::Cpu, 10 * GB)]);
        let need = Need {
            accelerated: true,
            memory: 4 * GB,
        };
        let a = pool.acquire(&need).unwrap();
        let b = pool.acquire(&need).unwrap();
        assert!(
            pool.acquire(&need).is_none(),
            "a third 4 GB stage does not fit in 10 GB"
        );
        pool.release(a.0, a.1);
        assert!(pool.acquire(&need).is_some());
        pool.release(b.0, b.1);
    }

    #[test]
    fn oversized_stage_runs_alone() {
        let mut pool = DevicePool::with_memory(&[(DeviceKind::Cpu, 10 * GB)]);
        let big = Need {
            accelerated: false,
            memory: 40 * GB,
        };
        let small = Need {
            accelerated: false,
            memory: GB,
        };
        let a = pool.acquire(&big).unwrap();
        assert!(pool.acquire(&small).is_none());
        pool.release(a.0, a.1);
        assert!(pool.acquire(&small).is_some());
    }

    #[test]
    fn accelerated_work_goes_to_the_gpu_with_most_free_memory() {
        let mut pool = DevicePool::with_memory(&[
            (DeviceKind::Cpu, 64 * GB),
            (DeviceKind::Cuda(0), 24 * GB),
            (DeviceKind::Cuda(1), 80 * GB),
        ]);
        let gpu = Need {
            accelerated: true,
            memory: 30 * GB,
        };
        let (slot, _) = pool.acquire(&gpu).unwrap();
        assert_eq!(pool.kind(slot), DeviceKind::Cuda(1));
        let (slot, _) = pool.acquire(&gpu).unwrap();
        assert_eq!(pool.kind(slot), DeviceKind::Cuda(1), "50 GB left on cuda:1");
        let (slot, _) = pool.acquire(&gpu).unwrap();
        assert_eq!(
            pool.kind(slot),
            DeviceKind::Cuda(0),
            "24 GB card takes it alone"
        );
        let cpu = Need {
            accelerated: false,
            memory: GB,
        };
        let (slot, _) = pool.acquire(&cpu).unwrap();
        assert_eq!(pool.kind(slot), DeviceKind::Cpu);
    }
}
