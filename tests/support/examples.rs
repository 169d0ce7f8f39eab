//! The example programs, as processes: built on demand with this test run's features
//! and profile (a filtered `cargo test` does not build examples, and an old binary would
//! test old code).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The freshly built example `name`, under this test binary's target directory:
/// `<target>/<profile>/examples/<name>`, next to `<target>/<profile>/deps/<this test>`.
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|done| done == name) {
        build_example(name, profile_dir);
        built.push(name.to_owned());
    }
    assert!(
        path.is_file(),
        "example binary {} not found after building it",
        path.display()
    );
    path
}

/// `cargo build --example name` with this run's features and profile.
fn build_example(name: &str, profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--example", name, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    match profile_dir.file_name().and_then(|dir| dir.to_str()) {
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) if profile != "debug" => {
            cmd.args(["--profile", profile]);
        }
        _ => {}
    }
    let features: Vec<&str> = [
        ("migrate", cfg!(feature = "migrate")),
        ("cli", cfg!(feature = "cli")),
        ("runtime-tokio", cfg!(feature = "runtime-tokio")),
        ("runtime-async-std", cfg!(feature = "runtime-async-std")),
        ("runtime-smol", cfg!(feature = "runtime-smol")),
        ("tls-native-tls", cfg!(feature = "tls-native-tls")),
        ("tls-rustls", cfg!(feature = "tls-rustls")),
        (
            "tls-rustls-ring-webpki",
            cfg!(feature = "tls-rustls-ring-webpki"),
        ),
        (
            "tls-rustls-ring-native-roots",
            cfg!(feature = "tls-rustls-ring-native-roots"),
        ),
        (
            "tls-rustls-aws-lc-rs",
            cfg!(feature = "tls-rustls-aws-lc-rs"),
        ),
    ]
    .into_iter()
    .filter_map(|(feature, on)| on.then_some(feature))
    .collect();
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("could not run {cmd:?}: {err}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
