//! The kernel-side programs of moat, as BPF ELF objects embedded in the binary.
//!
//! `build.rs` compiles every `bpf/**/*.bpf.c` (or, without clang, copies the
//! committed objects from `objects/`). Each object is a constant named after
//! its source file: `bpf/count/count.bpf.c` -> [`COUNT`].

include!(concat!(env!("OUT_DIR"), "/objects.rs"));

/// The object named `name` (file stem without `.bpf.c`), if embedded.
pub fn object(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
