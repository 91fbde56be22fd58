//! Which build a binary is: its GNU build id (the linker's hash of the build, in an ELF note),
//! or, for a binary without one, the file's size and modification time.

use std::path::Path;

/// `build-id <hex>`, or `size <bytes> mtime <secs>` without a build id; `unknown` when the
/// file cannot be read.
pub(crate) fn of_file(path: &Path) -> String {
    match crate::launch::elf::build_id(path) {
        Some(id) => format!("build-id {id}"),
        None => match std::fs::metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                format!("size {} mtime {}", m.len(), m.mtime())
            }
            Err(_) => "unknown".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_has_an_identity() {
        let me = std::env::current_exe().unwrap();
        let id = of_file(&me);
        assert!(
            id.starts_with("build-id ") || id.starts_with("size "),
            "{id}"
        );
        assert_eq!(of_file(&me), id, "the same file, the same identity");
        assert_eq!(of_file(Path::new("/nonexistent/flip")), "unknown");
    }
}
