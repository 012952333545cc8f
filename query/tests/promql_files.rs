//! Runs the project's PromQL test files (Prometheus' promqltest format)
//! in `tests/promql/`: every case must pass.

use std::path::Path;

use weft_query::promql::testfile::run_file;

#[test]
fn every_promql_test_file_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/promql");
    let mut passed = 0;
    let mut failures = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "test") {
            files += 1;
            let report = run_file(&entry.path()).unwrap();
            passed += report.passed;
            failures.extend(report.failed);
            failures.extend(report.skipped);
        }
    }
    assert!(files >= 4 && passed >= 100, "{files} files, {passed} cases passed");
    assert!(
        failures.is_empty(),
        "{} failing or skipped cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
