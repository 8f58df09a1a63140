//! Replays every kept fuzz input (`fuzz/seeds/<target>/` and the crashes
//! saved in `fuzz/regressions/<target>/`) through its target, on every
//! `cargo test`: a bug the fuzzer found stays fixed. Fuzzing itself is
//! `scripts/fuzz`.

use std::path::Path;

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n_inputs = 0;
    for (target, run) in realtime::fuzzing::TARGETS {
        for folder in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&input));
                assert!(outcome.is_ok(), "{target} fails on {}", path.display());
                n_inputs += 1;
            }
        }
    }
    // Every target has seeds: an empty run would prove nothing.
    assert!(
        n_inputs >= 2 * realtime::fuzzing::TARGETS.len(),
        "{n_inputs} inputs"
    );
}
