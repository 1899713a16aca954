//! [`Logs`]: what functions print (`console.*`, `ctx.log`), one file per function under
//! `<data_dir>/functions/logs/<name>.log`, rotated to `<name>.log.1` at 8 MiB.
//!
//! A line is `<time> v<version> <LEVEL> <message>`; newlines inside a message are escaped so
//! one call stays one line. A function version may print at most [`MAX_LINES_PER_SECOND`] lines a second; more
//! are counted and dropped, so a chatty function cannot fill the disk.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

/// Rotation size.
const ROTATE_AT: u64 = 8 << 20;
/// Most lines a function version writes per second before dropping.
pub const MAX_LINES_PER_SECOND: u32 = 1000;
/// Longest message kept, bytes.
const MAX_MESSAGE: usize = 8192;

/// The log files of every function.
#[derive(Debug)]
pub struct Logs {
    dir: Option<PathBuf>,
    files: Mutex<HashMap<String, Arc<Mutex<Option<std::fs::File>>>>>,
}

impl Logs {
    /// Logs under `dir`; `None` keeps no logs (benchmarks).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            files: Mutex::default(),
        }
    }

    /// A writer for one function version, for its engines.
    pub fn writer(self: &Arc<Self>, name: &str, version: u32) -> super::engine::LogFn {
        let logs = self.clone();
        let name = name.to_string();
        let budget = Arc::new(Mutex::new((std::time::Instant::now(), 0u32, 0u64)));
        Arc::new(move |level: &str, message: &str| {
            {
                let mut b = budget.lock();
                if b.0.elapsed() >= std::time::Duration::from_secs(1) {
                    let dropped = b.2;
                    *b = (std::time::Instant::now(), 0, 0);
                    if dropped > 0 {
                        drop(b);
                        logs.write(
                            &name,
                            version,
                            "warn",
                            &format!(
                                "{dropped} log lines dropped (over {MAX_LINES_PER_SECOND} a second)"
                            ),
                        );
                        b = budget.lock();
                    }
                }
                b.1 += 1;
                if b.1 > MAX_LINES_PER_SECOND {
                    b.2 += 1;
                    return;
                }
            }
            logs.write(&name, version, level, message);
        })
    }

    fn write(&self, name: &str, version: u32, level: &str, message: &str) {
        let Some(dir) = &self.dir else {
            return;
        };
        let slot = self
            .files
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone();
        let mut file = slot.lock();
        let path = dir.join(format!("{name}.log"));
        if file.is_none() {
            let _ = std::fs::create_dir_all(dir);
            *file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ok();
        }
        let Some(f) = file.as_mut() else {
            return;
        };
        let mut msg: String = message
            .chars()
            .flat_map(|c| match c {
                '\n' => vec!['\\', 'n'],
                '\r' => vec!['\\', 'r'],
                c => vec![c],
            })
            .collect();
        if msg.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let _ = writeln!(f, "{now} v{version} {} {msg}", level.to_uppercase());
        if f.metadata().map(|m| m.len()).unwrap_or(0) >= ROTATE_AT {
            let _ = std::fs::rename(&path, dir.join(format!("{name}.log.1")));
            *file = None;
        }
    }

    /// The last `n` lines a function printed, oldest first.
    pub fn tail(&self, name: &str, n: usize) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let read = |p: PathBuf| -> Vec<String> {
            std::fs::File::open(p)
                .map(|f| {
                    std::io::BufReader::new(f)
                        .lines()
                        .map_while(Result::ok)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut lines = read(dir.join(format!("{name}.log")));
        if lines.len() < n {
            let mut older = read(dir.join(format!("{name}.log.1")));
            older.append(&mut lines);
            lines = older;
        }
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }

    /// Removes a function's logs (when it is deleted).
    pub fn remove(&self, name: &str) {
        if let Some(dir) = &self.dir {
            self.files.lock().remove(name);
            let _ = std::fs::remove_file(dir.join(format!("{name}.log")));
            let _ = std::fs::remove_file(dir.join(format!("{name}.log.1")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_tails_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::new(Some(dir.path().to_path_buf())));
        let w = logs.writer("f", 3);
        w("info", "hello\nworld");
        for i in 0..(MAX_LINES_PER_SECOND + 10) {
            w("debug", &format!("line {i}"));
        }
        let tail = logs.tail("f", 5);
        assert_eq!(tail.len(), 5);
        assert!(tail[4].ends_with(&format!("v3 DEBUG line {}", MAX_LINES_PER_SECOND - 2)));
        let all = logs.tail("f", 10_000);
        assert!(all[0].ends_with("v3 INFO hello\\nworld"), "{}", all[0]);
        assert_eq!(all.len(), MAX_LINES_PER_SECOND as usize);
        logs.remove("f");
        assert!(logs.tail("f", 5).is_empty());
    }
}
