//! The power-cut file system itself: what was fsynced survives a cut, what was not is gone —
//! bytes, overwrites, new names, renames and removals — in both modes. This is what makes the
//! power-cut scenario able to fail.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use sluice_chaos::powercut::{Mode, PowerCutFs};

fn read(p: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(p).ok()?.read_to_string(&mut s).ok()?;
    Some(s)
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

#[test]
fn only_fsynced_bytes_and_names_survive_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut fs = PowerCutFs::mount(
        &dir.path().join("backing"),
        &dir.path().join("mnt"),
        Mode::Strict,
    )
    .expect("mount (the chaos suite runs as root with /dev/fuse)");
    let m = fs.path().to_path_buf();

    // Durable: a file fsynced, in a directory fsynced after it was created.
    fs::create_dir(m.join("d")).unwrap();
    sync_dir(&m);
    let mut f = File::create(m.join("d/kept")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    sync_dir(&m.join("d"));
    // Unsynced bytes appended after the sync, and an overwrite of synced bytes.
    f.write_all(b" tail").unwrap();
    let g = OpenOptions::new()
        .write(true)
        .open(m.join("d/kept"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&g, b"XX", 0).unwrap();
    drop((f, g));
    // A durable file renamed and another removed without a directory sync.
    File::create(m.join("d/a")).unwrap().sync_all().unwrap();
    File::create(m.join("d/b")).unwrap().sync_all().unwrap();
    sync_dir(&m.join("d"));
    fs::rename(m.join("d/a"), m.join("d/a2")).unwrap();
    fs::remove_file(m.join("d/b")).unwrap();
    // A file fsynced whose directory entry never was.
    let mut h = File::create(m.join("d/orphan")).unwrap();
    h.write_all(b"lost name").unwrap();
    h.sync_all().unwrap();
    drop(h);
    assert_eq!(read(&m.join("d/kept")).as_deref(), Some("XXrable tail"));

    let stats = fs.power_cut().unwrap();
    let m = fs.path().to_path_buf();
    assert_eq!(
        read(&m.join("d/kept")).as_deref(),
        Some("durable"),
        "{stats:?}"
    );
    assert!(!m.join("d/orphan").exists(), "an unsynced name is gone");
    assert!(
        m.join("d/a").exists() && !m.join("d/a2").exists(),
        "the rename is undone"
    );
    assert!(m.join("d/b").exists(), "the removal is undone");
    assert!(stats.bytes_dropped >= 5 && stats.overwrites_undone >= 1 && stats.names_undone >= 3);

    // Synced names stick: rename then directory fsync.
    fs::rename(m.join("d/a"), m.join("d/a3")).unwrap();
    sync_dir(&m.join("d"));
    fs.power_cut().unwrap();
    assert!(fs.path().join("d/a3").exists());
}

#[test]
fn data_only_mode_keeps_names_but_drops_their_unsynced_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut fs = PowerCutFs::mount(
        &dir.path().join("backing"),
        &dir.path().join("mnt"),
        Mode::DataOnly,
    )
    .expect("mount");
    let m = fs.path().to_path_buf();
    let mut f = File::create(m.join("tmp")).unwrap();
    f.write_all(b"never synced").unwrap();
    drop(f);
    fs::rename(m.join("tmp"), m.join("final")).unwrap();
    sync_dir(&m);
    fs.power_cut().unwrap();
    assert_eq!(read(&fs.path().join("final")).as_deref(), Some(""));
}
