//! Metadata read from a kubelet log path:
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log` and the
//! rotated `<restart>.log.<YYYYMMDD-hhmmss>` beside it.

use std::path::Path;

/// What the path of a pod log file says about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodLogPath {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub restart: u32,
    /// The kubelet rotation stamp (`20261125-221618`) of a rotated file.
    pub rotated_at: Option<String>,
}

impl PodLogPath {
    /// Parses `<pod dir>/<container>/<file>`; `None` for anything that is not
    /// a live or uncompressed rotated kubelet log file (`.gz`, `.tmp`, other
    /// names are skipped).
    pub fn parse(path: &Path) -> Option<PodLogPath> {
        let file = path.file_name()?.to_str()?;
        let container = path.parent()?.file_name()?.to_str()?;
        let pod_dir = path.parent()?.parent()?.file_name()?.to_str()?;
        let (restart, rotated_at) = parse_file_name(file)?;
        // Namespaces and pod names cannot contain '_', the uid is last.
        let mut parts = pod_dir.splitn(3, '_');
        let namespace = parts.next()?;
        let pod = parts.next()?;
        let pod_uid = parts.next()?;
        if namespace.is_empty() || pod.is_empty() || pod_uid.is_empty() || container.is_empty() {
            return None;
        }
        Some(PodLogPath {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            pod_uid: pod_uid.to_string(),
            container: container.to_string(),
            restart,
            rotated_at: rotated_at.map(str::to_string),
        })
    }
}

/// `0.log` → (0, None); `0.log.20261125-221618` → (0, Some(stamp)).
fn parse_file_name(file: &str) -> Option<(u32, Option<&str>)> {
    let (number, rest) = file.split_once(".log")?;
    let restart: u32 = number.parse().ok()?;
    if rest.is_empty() {
        return Some((restart, None));
    }
    let stamp = rest.strip_prefix('.')?;
    let bytes = stamp.as_bytes();
    let is_stamp =
        bytes.len() == 15 && bytes[8] == b'-' && bytes[..8].iter().all(u8::is_ascii_digit) && bytes[9..].iter().all(u8::is_ascii_digit);
    is_stamp.then_some((restart, Some(stamp)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_live_and_rotated_paths() {
        let live = PodLogPath::parse(Path::new("/var/log/pods/ml_train-0_1234-ab/main/3.log")).unwrap();
        assert_eq!(
            live,
            PodLogPath {
                namespace: "ml".into(),
                pod: "train-0".into(),
                pod_uid: "1234-ab".into(),
                container: "main".into(),
                restart: 3,
                rotated_at: None
            }
        );
        let rotated = PodLogPath::parse(Path::new("/x/ml_train-0_uid/main/0.log.20261125-221618")).unwrap();
        assert_eq!(rotated.rotated_at.as_deref(), Some("20261125-221618"));
        for skipped in [
            "/x/ml_train-0_uid/main/0.log.20261125-221618.gz",
            "/x/ml_train-0_uid/main/0.log.tmp",
            "/x/ml_train-0_uid/main/notes.txt",
            "/x/ml-train-0/main/0.log",
        ] {
            assert_eq!(PodLogPath::parse(Path::new(skipped)), None, "{skipped}");
        }
    }
}
