//! Small helpers shared by the host-side modules.

use std::path::Path;

/// The last 64 KiB of a file as text; bytes that are not UTF-8 are replaced.
fn read_tail(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
    let mut buf = Vec::new();
    f.take(MAX).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The last `lines` lines of a log file as one string (lines joined by ` / `), or a note
/// saying why there are none. Reads at most the last 64 KiB; bytes that are not UTF-8 are
/// replaced (the file may hold guest output).
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    let text = match read_tail(path) {
        Ok(t) => t,
        Err(e) => return format!("(no {}: {e})", path.display()),
    };
    let picked: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if picked.is_empty() {
        return "(empty)".into();
    }
    picked[picked.len().saturating_sub(lines)..].join(" / ")
}

/// The first line of the file's last 64 KiB that contains `needle`, trimmed.
pub fn first_line_containing(path: &Path, needle: &str) -> Option<String> {
    let text = read_tail(path).ok()?;
    text.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_containing_finds_the_earliest_match() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            "boot\n Kernel panic - one \ntrace\nKernel panic - two\n",
        )
        .unwrap();
        assert_eq!(
            first_line_containing(&p, "Kernel panic").as_deref(),
            Some("Kernel panic - one")
        );
        assert_eq!(first_line_containing(&p, "nothing"), None);
        assert_eq!(first_line_containing(&dir.path().join("none"), "x"), None);
    }

    #[test]
    fn tail_takes_the_last_non_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(tail_of_file(&p, 2), "c / d");
        assert_eq!(tail_of_file(&p, 10), "a / b / c / d");
        std::fs::write(&p, "").unwrap();
        assert_eq!(tail_of_file(&p, 3), "(empty)");
        assert!(tail_of_file(&dir.path().join("none"), 3).starts_with("(no "));
    }

    #[test]
    fn tail_survives_binary_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, b"\xff\xfe\x00ok\n").unwrap();
        assert!(tail_of_file(&p, 1).ends_with("ok"));
    }
}
