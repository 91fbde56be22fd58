//! What a binary says of itself in its ELF notes, read from the file without running it: its
//! GNU build id (the linker's hash of the build), and the handoff versions a flip binary
//! speaks, from the note every flip binary carries (below).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The name of flip's note.
const FLIP_NOTE_NAME: &[u8] = b"flip\0";
/// The type of flip's note that holds the handoff versions: the lowest, then the highest, as
/// 32-bit little-endian numbers.
const NT_FLIP_HANDOFF: u32 = 1;
const NT_GNU_BUILD_ID: u32 = 3;

// Every binary that links flip carries this note (`.note.flip.handoff`, in a `PT_NOTE`
// segment), so that a running flip reads what a new binary speaks before it hands anything
// over. Linkers keep note sections that nothing references, but an archive member is linked
// only when a symbol of it is used: `keep_note` uses the label.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
std::arch::global_asm!(
    ".pushsection .note.flip.handoff,\"a\",@note",
    ".balign 4",
    ".globl flip_handoff_note",
    ".hidden flip_handoff_note",
    "flip_handoff_note:",
    ".long 5",
    ".long 8",
    ".long {kind}",
    ".asciz \"flip\"",
    ".balign 4",
    ".long {lowest}",
    ".long {highest}",
    ".popsection",
    kind = const NT_FLIP_HANDOFF,
    lowest = const crate::handoff::OLDEST_VERSION,
    highest = const crate::handoff::NEWEST_VERSION,
);

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe extern "C" {
    static flip_handoff_note: u8;
}

/// Makes sure the note is linked into the binary; called at every start.
pub(crate) fn keep_note() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    std::hint::black_box(&raw const flip_handoff_note);
}

/// The handoff versions the binary at `path` declares (lowest, highest); `None` when it
/// declares none: not an ELF file (a script), or flip up to a539953.
pub(crate) fn handoff_versions(path: &Path) -> Option<(u32, u32)> {
    let mut found = None;
    each_note(path, |name, kind, desc| {
        if name == FLIP_NOTE_NAME && kind == NT_FLIP_HANDOFF && desc.len() >= 8 {
            let lowest = u32::from_le_bytes(desc[0..4].try_into().ok()?);
            let highest = u32::from_le_bytes(desc[4..8].try_into().ok()?);
            found = Some((lowest, highest));
            return None;
        }
        Some(())
    });
    found
}

/// The GNU build id of the binary at `path`, in hex.
pub(crate) fn build_id(path: &Path) -> Option<String> {
    let mut found = None;
    each_note(path, |name, kind, desc| {
        if name == b"GNU\0" && kind == NT_GNU_BUILD_ID {
            found = Some(desc.iter().map(|b| format!("{b:02x}")).collect());
            return None;
        }
        Some(())
    });
    found
}

/// Calls `f(name, type, description)` for each note of the `PT_NOTE` segments of the ELF64
/// little-endian file at `path`, until `f` returns `None`. Trusts nothing in the file: sizes are
/// bounded, every read checked.
fn each_note(path: &Path, mut f: impl FnMut(&[u8], u32, &[u8]) -> Option<()>) -> Option<()> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header).ok()?;
    // ELF magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let phoff = u64_at(&header, 32)?;
    let phentsize = usize::from(u16_at(&header, 54)?);
    let phnum = usize::from(u16_at(&header, 56)?);
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut table = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut table).ok()?;
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
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut notes).ok()?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = usize::try_from(u32_at(&notes, at)?).ok()?;
            let descsz = usize::try_from(u32_at(&notes, at + 4)?).ok()?;
            let kind = u32_at(&notes, at + 8)?;
            let name_at = at + 12;
            let desc_at = name_at.checked_add(namesz.checked_next_multiple_of(4)?)?;
            let end = desc_at.checked_add(descsz.checked_next_multiple_of(4)?)?;
            let name = notes.get(name_at..name_at + namesz)?;
            let desc = notes.get(desc_at..desc_at + descsz)?;
            f(name, kind, desc)?;
            at = end;
        }
    }
    Some(())
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_binary_declares_the_versions_it_speaks_and_a_script_none() {
        keep_note();
        let me = std::env::current_exe().unwrap();
        assert_eq!(
            handoff_versions(&me),
            Some((
                crate::handoff::OLDEST_VERSION,
                crate::handoff::NEWEST_VERSION
            ))
        );
        assert!(build_id(&me).is_some_and(|id| id.len() >= 16));
        let dir = std::env::temp_dir().join(format!("flip-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("app");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(handoff_versions(&script), None);
        assert_eq!(handoff_versions(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn negotiation_takes_the_highest_shared_version_and_none_without_one() {
        use crate::handoff::negotiate;
        assert_eq!(
            negotiate(None),
            Some(1),
            "a binary without the note speaks 1"
        );
        assert_eq!(negotiate(Some((1, 2))), Some(2));
        assert_eq!(negotiate(Some((1, 7))), Some(2));
        assert_eq!(negotiate(Some((2, 2))), Some(2));
        assert_eq!(negotiate(Some((9, 9))), None);
        assert_eq!(negotiate(Some((0, 0))), None);
        assert_eq!(negotiate(Some((2, 1))), None);
    }
}
