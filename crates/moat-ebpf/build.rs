//! Compiles every `bpf/**/*.bpf.c` with clang into BPF objects and embeds them.
//!
//! * clang (and llvm-strip) present: build from source with
//!   `-O2 -g -target bpf -Wall -Werror`, then strip DWARF and keep BTF. The
//!   build is reproducible (`-ffile-prefix-map`), so the result must equal the
//!   committed copy in `objects/`; the test `committed_objects_are_fresh`
//!   checks that.
//! * clang absent: use the committed objects, so a user with only the Rust
//!   toolchain can build moat.
//!
//! Environment knobs:
//! * `MOAT_CLANG` / `MOAT_LLVM_STRIP`: the tools to use.
//! * `MOAT_EBPF_PREBUILT=1`: use the committed objects even if clang exists.
//! * `MOAT_EBPF_REQUIRE_CLANG=1`: fail instead of falling back (CI).
//! * `MOAT_EBPF_UPDATE=1`: after building, copy the objects into `objects/`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../..").canonicalize().unwrap();
    let bpf_dir = root.join("bpf");
    let committed = manifest.join("objects");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    for k in [
        "MOAT_CLANG",
        "MOAT_LLVM_STRIP",
        "MOAT_EBPF_PREBUILT",
        "MOAT_EBPF_REQUIRE_CLANG",
        "MOAT_EBPF_UPDATE",
    ] {
        println!("cargo:rerun-if-env-changed={k}");
    }
    println!("cargo:rerun-if-changed={}", committed.display());

    let mut sources = Vec::new();
    if bpf_dir.is_dir() {
        find_sources(&bpf_dir, &mut sources);
    }
    sources.sort();
    // Re-run when any .c or .h below bpf/ changes (or a file appears).
    watch(&bpf_dir);

    let flag = |k: &str| env::var(k).map(|v| v == "1").unwrap_or(false);
    let tools = if flag("MOAT_EBPF_PREBUILT") {
        None
    } else {
        find_tools()
    };
    if tools.is_none() && flag("MOAT_EBPF_REQUIRE_CLANG") {
        panic!("MOAT_EBPF_REQUIRE_CLANG=1 but clang/llvm-strip were not found (set MOAT_CLANG)");
    }

    // (name, test-only) per object; test-only objects come from bpf/testdata/.
    let mut names: Vec<(String, bool)> = Vec::new();
    let test_only = |src: &Path| src.components().any(|c| c.as_os_str() == "testdata");
    match &tools {
        Some((clang, strip)) => {
            for src in &sources {
                let name = object_name(src);
                let obj = out.join(format!("{name}.bpf.o"));
                compile(clang, strip, &root, src, &obj);
                if flag("MOAT_EBPF_UPDATE") {
                    fs::create_dir_all(&committed).unwrap();
                    fs::copy(&obj, committed.join(format!("{name}.bpf.o"))).unwrap();
                }
                names.push((name, test_only(src)));
            }
        }
        None => {
            println!(
                "cargo:warning=clang not found: using the committed BPF objects in {}",
                committed.display()
            );
            for src in &sources {
                let name = object_name(src);
                let file = format!("{name}.bpf.o");
                let from = committed.join(&file);
                fs::copy(&from, out.join(&file)).unwrap_or_else(|e| {
                    panic!("no clang and no committed object {}: {e}", from.display())
                });
                names.push((name, test_only(src)));
            }
        }
    }

    // objects.rs: one constant per object, plus the list of all of them.
    let mut rs = String::new();
    let konst = |n: &str| {
        format!(
            "/// `{n}.bpf.c`, compiled.\npub static {}: &[u8] = aya::include_bytes_aligned!(concat!(env!(\"OUT_DIR\"), \"/{n}.bpf.o\"));\n",
            n.to_uppercase()
        )
    };
    for (n, _) in names.iter().filter(|(_, t)| !t) {
        rs.push_str(&konst(n));
    }
    rs.push_str("/// Test-only objects (`bpf/testdata/`): never loaded by moat itself.\npub mod testdata {\n");
    for (n, _) in names.iter().filter(|(_, t)| *t) {
        rs.push_str(&konst(n));
    }
    rs.push_str("}\n");
    rs.push_str("/// Every embedded object: (name, bytes), test-only ones included.\npub static ALL: &[(&str, &[u8])] = &[\n");
    for (n, t) in &names {
        let m = if *t { "testdata::" } else { "" };
        rs.push_str(&format!("    (\"{n}\", {m}{}),\n", n.to_uppercase()));
    }
    rs.push_str("];\n");
    rs.push_str(&format!(
        "/// True when the objects were compiled from source by this build.\npub const BUILT_FROM_SOURCE: bool = {};\n",
        tools.is_some()
    ));
    fs::write(out.join("objects.rs"), rs).unwrap();
}

fn find_sources(dir: &Path, acc: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_sources(&p, acc);
        } else if p.to_string_lossy().ends_with(".bpf.c") {
            acc.push(p);
        }
    }
}

fn watch(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            watch(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn object_name(src: &Path) -> String {
    let f = src.file_name().unwrap().to_string_lossy();
    f.trim_end_matches(".bpf.c").to_string()
}

fn runs(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn find_tools() -> Option<(String, String)> {
    let clang = env::var("MOAT_CLANG")
        .ok()
        .into_iter()
        .chain(["clang-19", "clang"].map(String::from))
        .find(|c| runs(c))?;
    let strip = env::var("MOAT_LLVM_STRIP")
        .ok()
        .into_iter()
        .chain(["llvm-strip-19", "llvm-strip"].map(String::from))
        .find(|c| runs(c));
    match strip {
        Some(s) => Some((clang, s)),
        None => {
            println!("cargo:warning=clang found but llvm-strip missing: using committed objects");
            None
        }
    }
}

fn compile(clang: &str, strip: &str, root: &Path, src: &Path, obj: &Path) {
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok("riscv64") => "riscv64-linux-gnu",
        Ok("powerpc64") => "powerpc64le-linux-gnu",
        Ok("s390x") => "s390x-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let prefix_map = format!("-ffile-prefix-map={}/=", root.display());
    let status = Command::new(clang)
        .current_dir(root)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(&prefix_map)
        .arg(format!("-I/usr/include/{arch}"))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    if !status.success() {
        panic!("{clang} failed on {}", src.display());
    }
    // Keep BTF (.BTF, .BTF.ext: types and source lines for verifier logs),
    // drop DWARF: the object shrinks and stays reproducible.
    let status = Command::new(strip)
        .arg("-g")
        .arg(obj)
        .status()
        .unwrap_or_else(|e| panic!("running {strip}: {e}"));
    if !status.success() {
        panic!("{strip} -g failed on {}", obj.display());
    }
}
