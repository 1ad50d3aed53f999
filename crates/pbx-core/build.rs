//! Builds the bundled libopus (feature `bundled-opus`, the default) from the
//! sources in `libopus/` with the `cc` crate: a C compiler is all it needs
//! (no pkg-config, no cmake). Float build, portable C (no intrinsics, no
//! run-time CPU detection), the file lists taken from libopus' own `*.mk`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // With `system-opus` the system library is used (and the two would
    // define the same symbols): nothing to build.
    #[cfg(all(feature = "bundled-opus", not(feature = "system-opus")))]
    build_opus();
}

/// The files listed under `var` in a libopus `*.mk` file.
#[cfg_attr(
    any(not(feature = "bundled-opus"), feature = "system-opus"),
    allow(dead_code)
)]
fn mk_list(mk: &str, var: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in mk.lines() {
        let l = line.trim();
        if !inside {
            if let Some(rest) = l.strip_prefix(var) {
                if rest.trim_start().starts_with('=') {
                    inside = true;
                    let after = rest.trim_start()[1..].trim();
                    out.extend(
                        after
                            .split_whitespace()
                            .filter(|w| *w != "\\")
                            .map(String::from),
                    );
                    if !l.ends_with('\\') {
                        break;
                    }
                }
            }
            continue;
        }
        out.extend(
            l.split_whitespace()
                .filter(|w| *w != "\\")
                .map(String::from),
        );
        if !l.ends_with('\\') {
            break;
        }
    }
    out
}

#[cfg(all(feature = "bundled-opus", not(feature = "system-opus")))]
fn build_opus() {
    let root = std::path::Path::new("libopus");
    println!("cargo:rerun-if-changed=libopus");
    let read = |f: &str| std::fs::read_to_string(root.join(f)).expect("libopus source list");
    let (celt, silk, opus) = (
        read("celt_sources.mk"),
        read("silk_sources.mk"),
        read("opus_sources.mk"),
    );
    let mut files = mk_list(&celt, "CELT_SOURCES");
    files.extend(mk_list(&silk, "SILK_SOURCES"));
    files.extend(mk_list(&silk, "SILK_SOURCES_FLOAT"));
    files.extend(mk_list(&opus, "OPUS_SOURCES"));
    files.extend(mk_list(&opus, "OPUS_SOURCES_FLOAT"));
    assert!(
        files.len() > 100,
        "libopus source lists look wrong ({} files)",
        files.len()
    );
    let mut b = cc::Build::new();
    b.warnings(false)
        .include(root.join("include"))
        .include(root.join("celt"))
        .include(root.join("silk"))
        .include(root.join("silk/float"))
        .include(root.join("src"))
        .include(root)
        .define("OPUS_BUILD", None)
        .define("USE_ALLOCA", None)
        .define("HAVE_LRINTF", Some("1"))
        .define("HAVE_LRINT", Some("1"))
        .define("PACKAGE_VERSION", Some("\"1.3-bundled\""))
        .flag_if_supported("-fno-math-errno")
        .opt_level(2);
    for f in &files {
        b.file(root.join(f));
    }
    b.compile("opus");
}
