//! Compile errors of the macros: each case names what is wrong, on the offending span, with the
//! allowed forms. The expected messages are checked in beside each case (`tests/ui/*.stderr`);
//! regenerate them with `TRYBUILD=overwrite cargo test --test ui` after a deliberate change.

#[test]
fn macros() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass-*.rs");
    t.compile_fail("tests/ui/main-*.rs");
    t.compile_fail("tests/ui/starter-*.rs");
    t.compile_fail("tests/ui/health-*.rs");
}
