//! Corpus replay: every seed under `fuzz/seeds/<target>/` (the unit tests' inputs, and the
//! `r12-*` inputs the fuzzer once crashed on) goes through the same target bodies the fuzz
//! binaries run, so `make test` checks them without a fuzzer. It owns no parser logic: the
//! bodies and their checks live in `fuzz/src/lib.rs`, included here as a module.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/lib.rs"]
mod targets;

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

fn seeds_of(target: &str) -> Vec<PathBuf> {
    let dir = seed_dir().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_seeds_every_seed_replays_without_a_panic() {
    let mut failed = Vec::new();
    for (target, body) in targets::TARGETS {
        let seeds = seeds_of(target);
        assert!(seeds.len() >= 5, "{target}: only {} seeds", seeds.len());
        for path in seeds {
            let bytes = std::fs::read(&path).expect("read a seed");
            if std::panic::catch_unwind(|| body(&bytes)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "seeds that panicked: {failed:#?}");
}

#[test]
fn fuzz_seeds_every_seed_directory_is_a_target() {
    let names: Vec<&str> = targets::TARGETS.iter().map(|(name, _)| *name).collect();
    for entry in std::fs::read_dir(seed_dir()).expect("list fuzz/seeds") {
        let name = entry.expect("a directory entry").file_name().into_string().expect("a UTF-8 name");
        assert!(names.contains(&name.as_str()), "fuzz/seeds/{name} belongs to no target");
    }
}

/// Inputs the fuzzer crashed on before their fix (each has an `r12_` unit test too).
const REGRESSION_SEEDS: &[(&str, &str)] = &[("http_parse", "r12-header-limit-split")];

#[test]
fn fuzz_seeds_the_regression_seeds_are_kept() {
    for (target, name) in REGRESSION_SEEDS {
        assert!(seed_dir().join(target).join(name).is_file(), "{target}/{name} is missing");
    }
}
