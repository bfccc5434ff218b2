//! The content-addressed cache from the outside: entries, corruption, races, crashes, gc, runs.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use whittle::cache::{
    Cache, CacheError, Digest, EntryMeta, GcOptions, KeyInputs, Lookup, RunRecord, StageRecord,
    StageStatus,
};

fn key_inputs(n: i64) -> KeyInputs {
    let mut k = KeyInputs::new("prune", 1);
    k.params.insert("method".into(), "wanda".into());
    k.params.insert("n".into(), n.into());
    k
}

/// Deterministic bytes that differ per (entry, file).
fn payload(n: i64, file: usize, len: usize) -> Vec<u8> {
    let seed = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ file as u64;
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Writes entry `n` with `files` files of `len` bytes (one in a sub-directory).
fn write_entry(cache: &Cache, n: i64, files: usize, len: usize) -> whittle::cache::Entry {
    let ki = key_inputs(n);
    let w = cache.writer(ki.digest()).unwrap();
    for f in 0..files {
        let p = w.dir().join(rel_name(f));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, payload(n, f, len)).unwrap();
    }
    let mut meta = EntryMeta::new(ki, format!("prune[n={n}]"));
    meta.meta = serde_json::json!({ "n": n });
    w.finish(meta).unwrap()
}

fn rel_name(f: usize) -> String {
    if f == 0 {
        "sub/dir/first.bin".into()
    } else {
        format!("file{f}.bin")
    }
}

fn hit(cache: &Cache, key: &Digest) -> whittle::cache::Entry {
    match cache.lookup(key).unwrap() {
        Lookup::Hit(e) => e,
        other => panic!("expected a hit for {key:?}, got {other:?}"),
    }
}

fn removed(r: &whittle::cache::GcReport) -> Vec<(Digest, u64)> {
    r.removed.iter().map(|e| (e.key, e.bytes)).collect()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn backdate(path: &Path, age: Duration) {
    File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

#[test]
fn write_then_lookup_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let key = key_inputs(7).digest();
    assert!(matches!(cache.lookup(&key).unwrap(), Lookup::Miss));

    let written = write_entry(&cache, 7, 3, 1000);
    assert_eq!(
        written.dir(),
        t.path()
            .join("v1/entries")
            .join(&key.hex()[..2])
            .join(key.hex())
    );
    let e = hit(&cache, &key);
    let m = e.manifest();
    assert_eq!(m.key, key);
    assert_eq!(m.key_inputs, key_inputs(7));
    assert_eq!(m.kind, "prune");
    assert_eq!(m.stage, "prune[n=7]");
    assert_eq!(m.meta, serde_json::json!({ "n": 7 }));
    assert!(
        m.created.parse::<jiff::Timestamp>().is_ok(),
        "{}",
        m.created
    );
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["file1.bin", "file2.bin", "sub/dir/first.bin"]);
    for f in &m.files {
        let bytes = fs::read(e.path(&f.path)).unwrap();
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.blake3, Digest(*blake3::hash(&bytes).as_bytes()));
    }
    assert_eq!(fs::read(e.path("file2.bin")).unwrap(), payload(7, 2, 1000));
    e.verify().unwrap();
    assert_eq!(m, written.manifest());
    // The staging directory is gone once published.
    assert!(dir_names(&t.path().join("v1/tmp")).is_empty());
}

#[test]
fn nothing_without_a_manifest_is_a_hit() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();

    // A write in progress: files staged, not finished.
    let ki = key_inputs(1);
    let w = cache.writer(ki.digest()).unwrap();
    fs::write(w.dir().join("model.bin"), b"half a model").unwrap();
    fs::write(w.dir().join(".manifest.json.1.2.tmp"), b"{\"schema\":1,").unwrap();
    assert!(matches!(cache.lookup(&ki.digest()).unwrap(), Lookup::Miss));
    let staging = w.dir().to_path_buf();
    drop(w);
    assert!(
        !staging.exists(),
        "dropping an unfinished writer removes its staging dir"
    );

    // An entry directory whose manifest is missing or cut short (not something our writer leaves,
    // but a copy or a disk can): corrupt, moved aside, and a miss afterwards.
    for (n, manifest) in [(2, None), (3, Some(&b"{\"schema\": 1, \"key\": \"ab"[..]))] {
        let key = key_inputs(n).digest();
        let dir = cache.entry_dir(&key);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("model.bin"), b"bytes").unwrap();
        if let Some(m) = manifest {
            fs::write(dir.join("manifest.json"), m).unwrap();
        }
        match cache.lookup(&key).unwrap() {
            Lookup::Corrupt { reason } => assert!(reason.contains("manifest"), "{reason}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        assert!(!dir.exists());
        assert!(matches!(cache.lookup(&key).unwrap(), Lookup::Miss));
    }
}

#[test]
fn size_change_is_corrupt_and_quarantined() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let e = write_entry(&cache, 1, 2, 500);
    let f = e.path("file1.bin");
    fs::write(&f, payload(1, 1, 499)).unwrap();

    let reason = match cache.lookup(&e.key()).unwrap() {
        Lookup::Corrupt { reason } => reason,
        other => panic!("expected corrupt, got {other:?}"),
    };
    assert!(
        reason.contains("file1.bin") && reason.contains("499") && reason.contains("500"),
        "{reason}"
    );
    assert!(!e.dir().exists());
    let q = dir_names(&t.path().join("v1/quarantine"));
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(q[0].starts_with(&e.key().hex()) && q[1].ends_with(".reason"));
    assert!(matches!(cache.lookup(&e.key()).unwrap(), Lookup::Miss));

    // A deleted file is caught the same way.
    let e = write_entry(&cache, 2, 2, 10);
    fs::remove_file(e.path("sub/dir/first.bin")).unwrap();
    assert!(matches!(
        cache.lookup(&e.key()).unwrap(),
        Lookup::Corrupt { .. }
    ));
}

#[test]
fn same_size_content_change_fails_verify() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let e = write_entry(&cache, 1, 2, 4096);
    let f = e.path("file1.bin");
    let mut bytes = fs::read(&f).unwrap();
    bytes[2000] ^= 1;
    fs::write(&f, &bytes).unwrap();

    // The cheap lookup cannot see it; the full check does, and moves the entry aside.
    let e = hit(&cache, &e.key());
    let err = e.verify().unwrap_err();
    match &err {
        CacheError::Corrupt { reason, .. } => {
            assert!(reason.contains("file1.bin"), "{reason}")
        }
        other => panic!("expected corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("quarantine"), "{err}");
    assert!(matches!(cache.lookup(&e.key()).unwrap(), Lookup::Miss));
}

#[test]
fn concurrent_writers_of_one_key_make_one_entry() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let threads = 6;
    let barrier = Arc::new(Barrier::new(threads));
    let entries: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                s.spawn(move || {
                    let ki = key_inputs(42);
                    let w = cache.writer(ki.digest()).unwrap();
                    fs::write(w.dir().join("a.bin"), payload(42, 0, 1 << 20)).unwrap();
                    barrier.wait();
                    w.finish(EntryMeta::new(ki, "prune[n=42]")).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let key = key_inputs(42).digest();
    for e in &entries {
        assert_eq!(e.dir(), cache.entry_dir(&key));
        assert_eq!(e.content(), entries[0].content());
        e.verify().unwrap();
    }
    assert_eq!(
        dir_names(&t.path().join("v1/entries").join(&key.hex()[..2])),
        [key.hex()]
    );
    assert!(dir_names(&t.path().join("v1/tmp")).is_empty());
    assert_eq!(
        fs::read(hit(&cache, &key).path("a.bin")).unwrap(),
        payload(42, 0, 1 << 20)
    );
}

const CRASH_DIR: &str = "WHITTLE_TEST_CRASH_DIR";
const CRASH_FROM: &str = "WHITTLE_TEST_CRASH_FROM";

/// Child half of `killed_writers_never_leave_partial_entries`: writes entries until killed. Does
/// nothing when run as an ordinary test.
#[test]
fn crash_child_writer() {
    let (Ok(dir), Ok(from)) = (std::env::var(CRASH_DIR), std::env::var(CRASH_FROM)) else {
        return;
    };
    let cache = Cache::open(Path::new(&dir)).unwrap();
    let from: i64 = from.parse().unwrap();
    for n in from.. {
        write_entry(&cache, n, 3, 3 << 20);
    }
}

#[test]
fn killed_writers_never_leave_partial_entries() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    Cache::open(&root).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut attempted = 0;
    for round in 0..6i64 {
        let from = round * 1000;
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "crash_child_writer", "--test-threads=1"])
            .env(CRASH_DIR, &root)
            .env(CRASH_FROM, from.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rand::random_range(60..400)));
        child.kill().unwrap(); // SIGKILL: no destructors, no cleanup
        child.wait().unwrap();
        attempted = from + 1000;
    }

    let cache = Cache::open(&root).unwrap();
    let mut complete = 0;
    for (key, manifest) in cache.entries().unwrap() {
        let m = manifest.unwrap_or_else(|e| panic!("entry {key:?} has no readable manifest: {e}"));
        let e = hit(&cache, &key);
        e.verify().unwrap();
        let n = m.meta["n"].as_i64().unwrap();
        for f in 0..3 {
            assert_eq!(
                fs::read(e.path(rel_name(f))).unwrap(),
                payload(n, f, 3 << 20)
            );
        }
        complete += 1;
    }
    // Every key any child may have touched is a clean hit or a clean miss.
    for round in 0..6i64 {
        for n in round * 1000..round * 1000 + 1000 {
            match cache.lookup(&key_inputs(n).digest()).unwrap() {
                Lookup::Hit(_) | Lookup::Miss => {}
                Lookup::Corrupt { reason } => panic!("entry {n} corrupt after a crash: {reason}"),
            }
        }
    }
    assert!(attempted > 0 && complete > 0);

    // What the killed writers left in tmp/ is recognised as abandoned once idle long enough.
    let leftovers = dir_names(&root.join("v1/tmp"));
    eprintln!(
        "{complete} complete entries, {} staging leftovers",
        leftovers.len()
    );
    for name in &leftovers {
        let mut stack = vec![root.join("v1/tmp").join(name)];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
            backdate(&p, Duration::from_secs(7200));
        }
    }
    let r = cache.gc(GcOptions::default()).unwrap();
    assert_eq!(r.tmp_cleaned, leftovers.len());
    assert_eq!(r.kept, complete);
    assert!(dir_names(&root.join("v1/tmp")).is_empty());
}

#[test]
fn gc_keep_older_than_and_dry_run() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let a = write_entry(&cache, 1, 2, 100);
    let b = write_entry(&cache, 2, 2, 200);
    let c = write_entry(&cache, 3, 1, 300);
    let size = |e: &whittle::cache::Entry| -> u64 {
        let files: u64 = e.manifest().files.iter().map(|f| f.size).sum();
        files + fs::metadata(e.dir().join("manifest.json")).unwrap().len()
    };
    let size_c = size(&c);

    // Make `a` old: its creation time lives in the manifest.
    let mut m = a.manifest().clone();
    m.created = "2020-01-01T00:00:00Z".into();
    fs::write(
        a.dir().join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let size_a = size(&a);

    let older = GcOptions {
        older_than: Some("2021-01-01T00:00:00Z".parse().unwrap()),
        dry_run: true,
        ..GcOptions::default()
    };
    let r = cache.gc(older.clone()).unwrap();
    assert_eq!(removed(&r), vec![(a.key(), size_a)]);
    assert_eq!(r.kept, 2);
    assert!(a.dir().exists(), "a dry run removes nothing");

    let r = cache
        .gc(GcOptions {
            dry_run: false,
            ..older
        })
        .unwrap();
    assert_eq!(removed(&r), vec![(a.key(), size_a)]);
    assert_eq!(r.freed_bytes, size_a);
    assert!(matches!(cache.lookup(&a.key()).unwrap(), Lookup::Miss));
    assert!(dir_names(&t.path().join("v1/tmp")).is_empty());

    let r = cache
        .gc(GcOptions {
            keep: Some(HashSet::from([b.key()])),
            ..GcOptions::default()
        })
        .unwrap();
    assert_eq!(removed(&r), vec![(c.key(), size_c)]);
    assert_eq!(r.kept, 1);
    hit(&cache, &b.key()).verify().unwrap();
    assert!(matches!(cache.lookup(&c.key()).unwrap(), Lookup::Miss));

    // No criteria: entries stay.
    let r = cache.gc(GcOptions::default()).unwrap();
    assert!(r.removed.is_empty());
    assert_eq!(r.kept, 1);
}

#[test]
fn gc_cleans_abandoned_tmp_and_quarantine() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let tmp = t.path().join("v1/tmp");
    let make = |name: &str, age: Duration| -> PathBuf {
        let d = tmp.join(name);
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/part.bin"), [0u8; 1000]).unwrap();
        for p in [d.join("sub/part.bin"), d.join("sub"), d.clone()] {
            backdate(&p, age);
        }
        d
    };
    let hour = Duration::from_secs(3600);
    // pid 999999999 exceeds Linux's pid_max, so it is never a running process.
    let dead_old = make("w-999999999-aaaa", 2 * hour);
    let dead_recent = make("w-999999999-bbbb", Duration::from_secs(60));
    let alive_old = make(&format!("w-{}-cccc", std::process::id()), 2 * hour);

    // One quarantined entry.
    let e = write_entry(&cache, 1, 1, 64);
    fs::write(e.path("sub/dir/first.bin"), b"short").unwrap();
    assert!(matches!(
        cache.lookup(&e.key()).unwrap(),
        Lookup::Corrupt { .. }
    ));
    let quarantined_bytes = 5 + fs::metadata(
        fs::read_dir(t.path().join("v1/quarantine"))
            .unwrap()
            .map(|d| d.unwrap().path())
            .find(|p| p.is_dir())
            .unwrap()
            .join("manifest.json"),
    )
    .unwrap()
    .len();
    let reason_bytes: u64 = fs::read_dir(t.path().join("v1/quarantine"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();

    let dry = cache
        .gc(GcOptions {
            dry_run: true,
            ..GcOptions::default()
        })
        .unwrap();
    assert_eq!((dry.tmp_cleaned, dry.quarantine_cleaned), (1, 1));
    assert!(dead_old.exists());

    let r = cache.gc(GcOptions::default()).unwrap();
    assert_eq!(r, dry);
    assert_eq!(r.freed_bytes, 1000 + quarantined_bytes + reason_bytes);
    assert!(!dead_old.exists());
    assert!(dead_recent.exists() && alive_old.exists());
    assert!(dir_names(&t.path().join("v1/quarantine")).is_empty());
}

#[test]
fn lookups_of_a_no_op_rerun_are_cheap() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let keys: Vec<Digest> = (0..40)
        .map(|n| write_entry(&cache, n, 4, 2048).key())
        .collect();
    let start = Instant::now();
    for k in &keys {
        hit(&cache, k);
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(200),
        "40 lookups took {elapsed:?}"
    );
}

fn stage(instance: &str, n: Option<i64>, status: StageStatus) -> StageRecord {
    StageRecord {
        instance: instance.into(),
        stage: "prune".into(),
        kind: "prune".into(),
        key: n.map(|n| key_inputs(n).digest()),
        status,
        duration_s: 0.25,
        key_inputs: n.map(key_inputs),
        error: (status == StageStatus::Failed).then(|| "out of memory".into()),
        log: Some("prune.log".into()),
    }
}

fn run(id: &str, started: &str, pipeline: &str, stages: Vec<StageRecord>) -> RunRecord {
    let mut r = RunRecord::start(pipeline, Digest::of_bytes(pipeline.as_bytes()));
    r.run_id = id.into();
    r.started = started.into();
    r.devices = vec!["cpu".into()];
    r.stages = stages;
    r.finish();
    r
}

#[test]
fn run_records_round_trip_and_order() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    // Same second: the ids' random suffixes sort the wrong way, the start times do not.
    let first = run(
        "20260101T000000Z-ffff",
        "2026-01-01T00:00:00.1Z",
        "p.yaml",
        vec![stage("prune[n=1]", Some(1), StageStatus::Ran)],
    );
    let second = run(
        "20260101T000000Z-0000",
        "2026-01-01T00:00:00.9Z",
        "p.yaml",
        vec![
            stage("prune[n=1]", Some(2), StageStatus::Cached),
            stage("eval", None, StageStatus::Skipped),
        ],
    );
    let third = run(
        "20260102T000000Z-1234",
        "2026-01-02T00:00:00Z",
        "p.yaml",
        vec![stage("prune[n=1]", None, StageStatus::Failed)],
    );
    let other = run(
        "20260103T000000Z-1234",
        "2026-01-03T00:00:00Z",
        "q.yaml",
        vec![stage("prune[n=1]", Some(9), StageStatus::Ran)],
    );
    for r in [&third, &other, &first, &second] {
        cache.write_run(r).unwrap();
    }
    fs::write(
        t.path().join("v1/runs/20260104T000000Z-dead.json"),
        b"{oops",
    )
    .unwrap();

    let runs = cache.runs();
    assert_eq!(runs, vec![first, second.clone(), third.clone(), other]);
    assert_eq!(cache.last_run_for("p.yaml"), Some(third));
    assert_eq!(cache.last_run_for("nope.yaml"), None);
    // The latest p.yaml run failed before a key: the one before it is the answer.
    assert_eq!(
        cache.last_key_inputs("prune[n=1]", "p.yaml"),
        Some(key_inputs(2))
    );
    assert_eq!(
        cache.last_key_inputs("prune[n=1]", "q.yaml"),
        Some(key_inputs(9))
    );
    assert_eq!(cache.last_key_inputs("eval", "p.yaml"), None);

    // Rewriting a record replaces it.
    let mut s = second;
    s.stages.clear();
    cache.write_run(&s).unwrap();
    assert_eq!(cache.runs()[1], s);
}

#[test]
fn run_record_json_shape() {
    let r = run(
        "20260101T000000Z-abcd",
        "2026-01-01T00:00:00Z",
        "p.yaml",
        vec![stage("eval", None, StageStatus::Cancelled)],
    );
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["stages"][0]["status"], "Cancelled");
    assert_eq!(v["stages"][0]["key"], serde_json::Value::Null);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "schema",
            "run_id",
            "pipeline",
            "pipeline_digest",
            "started",
            "finished",
            "engine_version",
            "devices",
            "stages"
        ]
    );
}

#[test]
fn unwritable_cache_says_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    // A cache root below a regular file cannot be created.
    let file = t.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = Cache::open(&file.join("cache")).unwrap_err();
    assert!(err.to_string().contains("file"), "{err}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = t.path().join("ro");
        Cache::open(&ro).unwrap();
        fs::set_permissions(ro.join("v1/tmp"), fs::Permissions::from_mode(0o555)).unwrap();
        // Root ignores permissions; the check only means something for other users.
        if File::create(ro.join("v1/tmp/probe")).is_err() {
            let err = Cache::open(&ro).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("not writable") && msg.contains("WHITTLE_CACHE_DIR"),
                "{msg}"
            );
        }
        fs::set_permissions(ro.join("v1/tmp"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn build_locks_exclude_a_second_builder_until_released() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let key = key_inputs(7).digest();
    let held = cache.try_lock_build(&key).unwrap().expect("free at first");
    assert!(
        cache.try_lock_build(&key).unwrap().is_none(),
        "two builders"
    );
    let other = key_inputs(8).digest();
    assert!(
        cache.try_lock_build(&other).unwrap().is_some(),
        "keys lock apart"
    );
    // A waiter gets the lock as soon as the holder lets go.
    let waiter = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let start = Instant::now();
            let _l = cache.lock_build(&key).unwrap();
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
        h.join().unwrap()
    });
    assert!(waiter >= Duration::from_millis(250), "{waiter:?}");
}

#[test]
fn gc_keeps_entries_a_live_lease_holds() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let a = write_entry(&cache, 1, 1, 100);
    let b = write_entry(&cache, 2, 1, 100);
    let lease = cache.lease("20260101T000000Z-0001").unwrap();
    lease.hold(&a.key()).unwrap();
    let everything = GcOptions {
        older_than: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60)),
        ..GcOptions::default()
    };
    let r = cache.gc(everything.clone()).unwrap();
    assert_eq!(r.in_use, vec![a.key()]);
    assert_eq!(
        removed(&r).iter().map(|r| r.0).collect::<Vec<_>>(),
        [b.key()]
    );
    assert_eq!(r.removed[0].stage, "prune[n=2]");
    hit(&cache, &a.key()).verify().unwrap();
    // The run is over: its lease goes, and so can the entry.
    drop(lease);
    let r = cache.gc(everything).unwrap();
    assert_eq!(
        removed(&r).iter().map(|r| r.0).collect::<Vec<_>>(),
        [a.key()]
    );
    assert!(dir_names(&t.path().join("v1/leases")).is_empty());
}

#[test]
fn a_dead_runs_lease_holds_nothing() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::open(t.path()).unwrap();
    let a = write_entry(&cache, 1, 1, 100);
    // What a SIGKILLed run leaves: a lease file nobody holds a lock on.
    fs::write(
        t.path().join("v1/leases/20260101T000000Z-dead.lease"),
        format!("{}\n", a.key().hex()),
    )
    .unwrap();
    let r = cache
        .gc(GcOptions {
            keep: Some(HashSet::new()),
            ..GcOptions::default()
        })
        .unwrap();
    assert!(r.in_use.is_empty());
    assert_eq!(
        removed(&r).iter().map(|r| r.0).collect::<Vec<_>>(),
        [a.key()]
    );
    assert!(dir_names(&t.path().join("v1/leases")).is_empty());
}
