//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same harnesses the cargo-fuzz targets run (`gpush_integration_tests::fuzzing`),
//! on stable and without libFuzzer: every seed and every input a fuzz run
//! kept stays a regression test.
//!
//! Inputs a target lists as known failures (bugs reproduced but not fixed
//! yet) must fail, and the replay fails when one of them passes.
//!
//! `GPUSH_WRITE_SEEDS=1 cargo test -p gpush-integration-tests --test fuzz_corpus`
//! (re)writes the hand-written seeds as `seed-<name>` files after they change.

use gpush_integration_tests::fuzzing::{TARGETS, Target};
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// Every file of the target's corpus, sorted; fails if there is none.
fn corpus(target: &Target) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_root().join(target.name);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Runs every corpus file through the target's harness and reports every
/// input that panics, by path.
fn replay(name: &str) {
    let target = target(name);
    if std::env::var_os("GPUSH_WRITE_SEEDS").is_some() {
        write_seeds(target);
    }
    let files = corpus(target);
    let known: BTreeSet<&str> = (target.known_failures)().into_iter().collect();
    let mut failed = Vec::new();
    let mut known_failed = BTreeSet::new();
    for (path, bytes) in &files {
        if catch_unwind(AssertUnwindSafe(|| (target.run)(bytes))).is_ok() {
            continue;
        }
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        match file.as_deref().filter(|f| known.contains(f)) {
            Some(file) => {
                known_failed.insert(file.to_owned());
            }
            None => failed.push(path.display().to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {name} failed (panic messages above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    // A known bug that no longer reproduces was fixed (or its input lost):
    // its entry must go, so the list never hides a regression.
    let fixed: Vec<&&str> = known
        .iter()
        .filter(|k| !known_failed.contains(**k))
        .collect();
    assert!(
        fixed.is_empty(),
        "known failures of {name} that pass now (remove them from the list): {fixed:?}"
    );
    // The hand-written seeds are all in the corpus, so a seed added in
    // code but not written out cannot go unnoticed.
    let committed: BTreeSet<&[u8]> = files.iter().map(|(_, bytes)| bytes.as_slice()).collect();
    for (seed, bytes) in (target.seeds)() {
        assert!(
            committed.contains(bytes.as_slice()),
            "seed {seed} of {name} is not in the corpus: run with GPUSH_WRITE_SEEDS=1"
        );
    }
}

fn write_seeds(target: &Target) {
    let dir = corpus_root().join(target.name);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for (seed, bytes) in (target.seeds)() {
        std::fs::write(dir.join(format!("seed-{seed}")), bytes).expect("write a seed");
    }
}

#[test]
fn ws_frames() {
    replay("ws_frames");
}

/// The known edge bugs (`KNOWN_EDGE_CLOSE_CODE_BUGS`,
/// `KNOWN_EDGE_CONTROL_FRAME_SIZE_BUGS`) are expected to fail, and print
/// their disagreement above.
#[test]
fn ws_differential() {
    replay("ws_differential");
}

#[test]
fn request() {
    replay("request");
}

#[test]
fn envelope() {
    replay("envelope");
}

#[test]
fn push_body() {
    replay("push_body");
}

#[test]
fn every_corpus_directory_is_a_target() {
    let names: BTreeSet<&str> = TARGETS.iter().map(|t| t.name).collect();
    for entry in std::fs::read_dir(corpus_root()).expect("the corpus root") {
        let name = entry.expect("directory entry").file_name();
        let name = name.to_string_lossy();
        assert!(names.contains(name.as_ref()), "corpus/{name} has no target");
    }
}
