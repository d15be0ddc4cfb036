//! sdk/README.md's walk-through, done literally: its shell, TOML, Rust and
//! YAML blocks are run and written in order in a scratch directory next to a
//! link to this checkout, and its curl commands are checked against the
//! proxy. Two changes: ports are picked free (10000 and 9901 become 0, 8080
//! the test's backend), and the proxy is the binary under test rather than
//! `cargo run`.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// The README's fenced blocks, as (language, text), in order.
fn blocks(readme: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.strip_prefix("```") else {
            continue;
        };
        let mut text = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        out.push((lang.to_string(), text));
    }
    out
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{script}\nfailed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_readme_walk_through_works() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("sdk/README.md")).unwrap();
    let b = blocks(&readme);
    let of = |lang: &str| -> Vec<&String> {
        b.iter()
            .filter(|(l, _)| l == lang)
            .map(|(_, t)| t)
            .collect()
    };
    let (sh_blocks, toml, rust, yaml) = (of("sh"), of("toml"), of("rust"), of("yaml"));
    assert_eq!(
        (sh_blocks.len(), toml.len(), rust.len(), yaml.len()),
        (4, 1, 1, 1),
        "the README's steps changed; update this test"
    );

    let scratch = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.canonicalize().unwrap(), scratch.path().join("legate"))
        .unwrap();
    // 1. `cargo new` (the block's `cd` is where the later steps run).
    sh(scratch.path(), sh_blocks[0]);
    let krate = scratch.path().join("hello_filter");
    // 2. The dependency lines, appended to Cargo.toml.
    let manifest = krate.join("Cargo.toml");
    let mut m = std::fs::read_to_string(&manifest).unwrap();
    assert!(m.trim_end().ends_with("[dependencies]"), "{m}");
    m.push_str(toml[0]);
    std::fs::write(&manifest, m).unwrap();
    // 3. The filter.
    std::fs::write(krate.join("src/lib.rs"), rust[0]).unwrap();
    // 4. The build.
    sh(&krate, sh_blocks[1]);
    assert!(
        krate
            .join("target/wasm32-wasip2/release/hello_filter.wasm")
            .exists()
    );
    // 5. The config, with free ports.
    let backend = echo_upstream("backend").await;
    let config = yaml[0]
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace(
            "port_value: 8080",
            &format!("port_value: {}", backend.port()),
        );
    std::fs::write(krate.join("legate.yaml"), &config).unwrap();
    // 6. Run it (the binary under test, from the crate's directory).
    assert!(sh_blocks[2].contains("-c legate.yaml"), "{}", sh_blocks[2]);
    let l = Legate::try_start_in(&config, &["--concurrency", "1"], Some(&krate))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let a = l.listener("main").await;
    let curls: Vec<&str> = sh_blocks[3].lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        curls,
        ["curl -i localhost:10000/", "curl -i localhost:10000/admin"]
    );
    let (status, head, body) = curl_get(&[&format!("localhost:{}/", a.port())]);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-powered-by: legate-sdk"), "{head}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-hello"], "from my first filter", "{body}");
    let (status, _, body) = curl_get(&[&format!("localhost:{}/admin", a.port())]);
    assert_eq!(status, 403);
    assert_eq!(body, "no admin here\n");
}
