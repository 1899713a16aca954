//! The lake's integration tests, in one binary (linking delta-rs once, not once per file).

mod deliver;
mod s3;
mod typed;
mod verify;

use std::path::{Path, PathBuf};

/// Sets the version of txn `app_id` in the newest JSON commit of the table in `table_dir` that
/// has one, as damage or an edit would. Returns the file and its text before, to restore it.
fn set_txn_version(table_dir: &Path, app_id: &str, version: i64) -> (PathBuf, String) {
    let mut commits: Vec<PathBuf> = std::fs::read_dir(table_dir.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    for path in commits.iter().rev() {
        let before = std::fs::read_to_string(path).unwrap();
        let mut found = false;
        let lines: Vec<String> = before
            .lines()
            .map(|line| {
                let mut action: serde_json::Value = serde_json::from_str(line).unwrap();
                let txn = action.get_mut("txn").filter(|t| t["appId"] == app_id);
                let Some(txn) = txn else {
                    return line.to_string();
                };
                found = true;
                txn["version"] = version.into();
                action.to_string()
            })
            .collect();
        if found {
            std::fs::write(path, lines.join("\n") + "\n").unwrap();
            return (path.clone(), before);
        }
    }
    panic!("no commit in {} has txn {app_id}", table_dir.display());
}
