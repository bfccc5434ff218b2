//! Whether the cache is on a filesystem every compute node sees: jobs write their entries there
//! and the submitting process reads them. Decided from the filesystem type of the cache
//! directory's mount (`/proc/self/mountinfo`) and the number of nodes in the cluster.

use std::path::Path;

/// What the check concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A network or cluster filesystem, or a one-node cluster.
    Shared,
    /// Possibly not shared: say so and go on.
    Warn(String),
    /// Certainly not shared (memory-backed, on a cluster of several nodes).
    Refuse(String),
}

/// Filesystems that are one machine's memory: never seen by another node.
const MEMORY: [&str; 3] = ["tmpfs", "ramfs", "devtmpfs"];
/// Filesystems that reach other machines by design.
const NETWORK: [&str; 14] = [
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "cifs",
    "smb3",
    "glusterfs",
    "fuse.glusterfs",
    "panfs",
    "wekafs",
    "fuse.juicefs",
    "9p",
];

/// The filesystem type of the mount holding `path` (the longest mount point above it).
pub fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        // `id parent major:minor root mount-point options [optional…] - type source super`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(mount), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let mount = unescape(mount);
        let Some(kind) = fields.get(dash + 1) else {
            continue;
        };
        if path.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), kind.to_string()));
        }
    }
    best.map(|(_, k)| k)
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// The verdict for a cache on a filesystem of type `fs` (if known) in a cluster of `nodes`
/// nodes (if known).
pub fn verdict(cache: &Path, fs: Option<&str>, nodes: Option<usize>) -> Verdict {
    let dir = cache.display();
    if nodes == Some(1) {
        return Verdict::Shared;
    }
    let many = match nodes {
        Some(n) => format!("the cluster has {n} nodes"),
        None => "the cluster's size is unknown".to_string(),
    };
    match fs {
        Some(fs) if NETWORK.contains(&fs) || fs.starts_with("nfs") => Verdict::Shared,
        Some(fs) if MEMORY.contains(&fs) && nodes.is_some() => Verdict::Refuse(format!(
            "the cache {dir} is on {fs}, this machine's memory, and {many}: jobs on other nodes \
             cannot write there. Use --cache-dir on a filesystem every node mounts (NFS, Lustre, \
             GPFS, BeeGFS, CephFS)"
        )),
        Some(fs) => Verdict::Warn(format!(
            "the cache {dir} is on {fs}, which may be this machine's own disk, and {many}: \
             every compute node must see it at the same path (--cache-dir on a shared filesystem)"
        )),
        None => Verdict::Warn(format!(
            "cannot tell whether the cache {dir} is on a filesystem every compute node sees; \
             it must be, at the same path"
        )),
    }
}

/// [`verdict`] for the cache at `cache`, asking the system and the cluster.
pub fn check(cache: &Path) -> Verdict {
    verdict(
        cache,
        fs_type(cache).as_deref(),
        super::commands::node_count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let c = Path::new("/scratch/cache");
        assert_eq!(verdict(c, Some("tmpfs"), Some(1)), Verdict::Shared);
        assert_eq!(verdict(c, Some("nfs4"), Some(40)), Verdict::Shared);
        assert_eq!(verdict(c, Some("lustre"), None), Verdict::Shared);
        assert!(
            matches!(verdict(c, Some("tmpfs"), Some(2)), Verdict::Refuse(m) if m.contains("tmpfs"))
        );
        assert!(
            matches!(verdict(c, Some("ext4"), Some(2)), Verdict::Warn(m) if m.contains("ext4"))
        );
        assert!(matches!(verdict(c, None, Some(2)), Verdict::Warn(_)));
        assert!(matches!(verdict(c, Some("tmpfs"), None), Verdict::Warn(_)));
    }

    #[test]
    fn the_root_is_on_some_filesystem() {
        assert!(fs_type(Path::new("/")).is_some());
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
    }
}
