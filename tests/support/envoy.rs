//! Real Envoy 1.40, the oracle of the differential tests: the binary and a
//! process on a config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use super::http_get;

static ENVOY_BIN: LazyLock<Result<PathBuf, String>> = LazyLock::new(|| {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/envoy/fetch.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{script} failed: {}", out.status));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        return Err(format!("{script} printed no path"));
    }
    Ok(PathBuf::from(path))
});

/// The Envoy binary (downloaded once by `tests/envoy/fetch.sh`); panics when it
/// cannot be had, so a test never silently skips the comparison.
pub fn envoy_bin() -> &'static Path {
    match &*ENVOY_BIN {
        Ok(p) => p,
        Err(e) => panic!("cannot get an Envoy binary: {e}"),
    }
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    pub child: Child,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
    stderr: PathBuf,
}

impl Envoy {
    pub async fn start(yaml: &str) -> Result<Envoy, String> {
        Self::start_with(yaml, &[]).await
    }

    pub async fn start_with(yaml: &str, extra: &[&str]) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
        let admin_file = dir.path().join("admin.addr");
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&cfg)
            .args(["--disable-hot-restart", "--use-dynamic-base-id"])
            .args(["--concurrency", "1", "-l", "warning"])
            .args(extra)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdout(Stdio::from(
                std::fs::File::create(&stdout).map_err(|e| e.to_string())?,
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).map_err(|e| e.to_string())?,
            ))
            .spawn()
            .map_err(|e| format!("spawn envoy: {e}"))?;
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            _dir: dir,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!(
                    "envoy exited early with {status}:\n{}",
                    envoy.stderr_text()
                ));
            }
            if let Ok(a) = std::fs::read_to_string(&admin_file)
                && let Ok(addr) = a.trim().parse()
            {
                envoy.admin = addr;
                if let Ok((200, _)) = http_get(addr, "/ready").await {
                    return Ok(envoy);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "envoy did not become ready:\n{}",
                    envoy.stderr_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Envoy {
    /// GETs an admin path with curl (Envoy's admin answers chunked).
    pub async fn admin_get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        tokio::task::spawn_blocking(move || super::curl(&[&url]).1)
            .await
            .unwrap()
    }

    /// A listener's bound address.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let body = self.admin_get("/listeners?format=json").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for l in v["listener_statuses"].as_array().unwrap() {
            if l["name"] == name {
                let sa = &l["local_address"]["socket_address"];
                return format!("{}:{}", sa["address"].as_str().unwrap(), sa["port_value"])
                    .parse()
                    .unwrap();
            }
        }
        panic!("no listener {name} in {body}");
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
