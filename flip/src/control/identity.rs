//! Which build a binary is: its GNU build id (the linker's hash of the build, in an ELF note),
//! or, for a binary without one, the file's size and modification time.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// `build-id <hex>`, or `size <bytes> mtime <secs>` without a build id; `unknown` when the
/// file cannot be read.
pub(crate) fn of_file(path: &Path) -> String {
    match build_id(path) {
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

/// The GNU build id of an ELF64 little-endian file, from its `PT_NOTE` segments.
fn build_id(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 64];
    f.read_exact(&mut header).ok()?;
    // ELF magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(&header, 32)?;
    let phentsize = usize::from(u16_at(&header, 54)?);
    let phnum = usize::from(u16_at(&header, 56)?);
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut table = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    for ph in table.chunks(phentsize) {
        const PT_NOTE: u32 = 4;
        if u32_at(ph, 0)? != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(ph, 8)?, u64_at(ph, 32)?);
        if size > 1 << 16 {
            continue;
        }
        let mut notes = vec![0u8; usize::try_from(size).ok()?];
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_exact(&mut notes).ok()?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = usize::try_from(u32_at(&notes, at)?).ok()?;
            let descsz = usize::try_from(u32_at(&notes, at + 4)?).ok()?;
            let kind = u32_at(&notes, at + 8)?;
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            const NT_GNU_BUILD_ID: u32 = 3;
            if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                let desc = notes.get(desc_at..desc_at + descsz)?;
                return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
            }
            at = end;
        }
    }
    None
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
