//! Throughput of input-file hashing on a cold memo: what a first run pays per checkpoint byte.
//!
//! `cargo bench --bench hash -- --warm-up-time 1 --measurement-time 5`

mod common;

use std::fs::File;
use std::io::{BufWriter, Write};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use whittle::cache::FileHasher;

const LEN: usize = 256 << 20;

fn hash_file_cold(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blob.bin");
    {
        // Non-constant bytes, so nothing could shortcut the work.
        let mut w = BufWriter::new(File::create(&path).expect("create blob"));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..LEN / block.len() {
            for b in block.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b.copy_from_slice(&state.to_le_bytes());
            }
            w.write_all(&block).expect("write blob");
        }
        w.flush().expect("flush blob");
    }
    let memo = dir.path().join("filehash.json");

    let mut g = c.benchmark_group("filehash");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("hash_file_cold_256MiB", |b| {
        b.iter(|| {
            let hasher = FileHasher::empty(memo.clone());
            let digest = hasher.hash_file(&path).expect("hash");
            assert_eq!(hasher.stats().hashed, 1, "a cold memo must read the file");
            digest
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = hash_file_cold
}
criterion_main!(benches);
