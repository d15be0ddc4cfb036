//! Throwaway MariaDB servers for the MySQL proxy tests (`.ci/run` installs
//! Debian's `mariadb-server` and `mariadb-client`), the real `mariadb` client,
//! and a Rust client (`mysql_async`).
//!
//! `mariadb-install-db` takes about 3 s, so it runs once: the initialised data
//! directory and a self-signed TLS certificate are kept as a template under
//! Cargo's `CARGO_TARGET_TMPDIR` (one per MariaDB version), and every server
//! starts on a copy of it in its own temporary directory, in a fraction of a
//! second.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The database the tests use, created by [`MariaDb::start`].
pub const DB: &str = "shop";
/// The application user (granted everything on `shop.*`) and its password.
pub const USER: &str = "app";
pub const PASSWORD: &str = "secret";
/// The server's `max_allowed_packet`: room for a 20 MB row.
pub const MAX_PACKET: usize = 64 << 20;

/// The schema and the user every server starts with.
const SETUP: &str = "
CREATE DATABASE shop;
CREATE TABLE shop.payments (id INT PRIMARY KEY AUTO_INCREMENT, amount INT NOT NULL);
CREATE TABLE shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(64) NOT NULL, qty INT NOT NULL);
CREATE TABLE shop.blobs (id INT PRIMARY KEY, data LONGBLOB NOT NULL);
INSERT INTO shop.payments (amount) VALUES (10), (20), (30);
INSERT INTO shop.orders (item, qty) VALUES ('apple', 3), ('pear', 7), ('plum', 12);
CREATE USER 'app'@'%' IDENTIFIED BY 'secret';
GRANT ALL ON shop.* TO 'app'@'%';
";

/// Server options shared by the template's initialisation and every server:
/// small memory, no performance schema, a small redo log, and UTF-8 (the
/// compiled-in default, used with `--no-defaults`, is latin1).
const SERVER_OPTS: &[&str] = &[
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--skip-performance-schema",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
];

/// A `mariadbd` on a loopback port, its data in a temporary directory; killed
/// (and the directory removed) on drop.
pub struct MariaDb {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl MariaDb {
    /// Starts a server with database `shop` (tables `payments`, `orders`,
    /// `blobs`) and user `app`/`secret`, TLS on (self-signed certificate).
    pub async fn start() -> MariaDb {
        let template = template();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&template.join("data"), &dir.path().join("data"))
            .unwrap_or_else(|e| panic!("copy the template data directory: {e}"));
        let port = super::closed_port();
        let log = dir.path().join("error.log");
        let mut cmd = Command::new(binary("mariadbd"));
        cmd.arg("--no-defaults");
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let child = cmd
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!(
                "--socket={}",
                dir.path().join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mysqld.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .args(SERVER_OPTS)
            .arg(format!("--max-allowed-packet={MAX_PACKET}"))
            .arg(format!(
                "--ssl-cert={}",
                template.join("cert.pem").display()
            ))
            .arg(format!("--ssl-key={}", template.join("key.pem").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd is installed (apt-get install mariadb-server; .ci/run does it)");
        let mut db = MariaDb {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        db.wait_up().await;
        db.exec_root(SETUP);
        db
    }

    /// Waits until the server sends its greeting (protocol version 10).
    async fn wait_up(&mut self) {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mariadbd exited with {status}:\n{}", self.error_log());
            }
            if let Ok(mut s) = tokio::net::TcpStream::connect(self.addr).await {
                let mut head = [0u8; 5];
                let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head));
                if let Ok(Ok(_)) = read.await
                    && head[4] == 10
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start on {}:\n{}",
                self.addr,
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's error log.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Runs SQL as root over the server's Unix socket (bypassing any proxy);
    /// returns the tab-separated rows. Panics on an error.
    pub fn exec_root(&self, sql: &str) -> String {
        let out = Command::new("timeout")
            .args(["-k", "2", "30", "mariadb", "--no-defaults", "-uroot"])
            .arg(format!(
                "--socket={}",
                self.dir.path().join("mysqld.sock").display()
            ))
            .args(["--batch", "--skip-column-names", "--skip-ssl"])
            .args(["--default-character-set=utf8mb4", "-e", sql])
            .output()
            .expect("mariadb client is installed (apt-get install mariadb-client)");
        assert!(
            out.status.success(),
            "root SQL failed ({}): {sql}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real `mariadb` client over TCP to `addr` (a server or a proxy) as
/// `user`/`password` on database `db` (none when empty), in batch mode
/// (tab-separated rows, no column names), with `sql` on its standard input.
/// Put one statement per line: the 10.11 client drops the rest of a line after
/// an error even with `--force` (and so does `--execute`, all one line), and
/// reports errors `at line N`. TLS is off unless `extra` asks for it with an
/// `--ssl...` flag: the 10.11 client otherwise turns TLS on by itself whenever
/// the server offers it. Killed after 30 s.
pub fn cli(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
    extra: &[&str],
) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-k",
        "2",
        "30",
        "mariadb",
        "--no-defaults",
        "--protocol=TCP",
    ])
    .arg(format!("--host={}", addr.ip()))
    .arg(format!("--port={}", addr.port()))
    .arg(format!("--user={user}"))
    .arg(format!("--password={password}"))
    .args(["--batch", "--skip-column-names", "--connect-timeout=10"])
    .arg("--default-character-set=utf8mb4");
    if !extra.iter().any(|a| a.starts_with("--ssl")) {
        cmd.arg("--skip-ssl");
    }
    cmd.args(extra);
    if !db.is_empty() {
        cmd.arg(format!("--database={db}"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mariadb client is installed (apt-get install mariadb-client)");
    let mut stdin = child.stdin.take().unwrap();
    // A client that exits early (failed login) closes its end: not an error here.
    let _ = stdin.write_all(sql.as_bytes());
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// The `ERROR ...` lines of a client run, in order (the client also echoes the
/// failing statement between dashes).
pub fn errors(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("ERROR "))
        .map(str::to_string)
        .collect()
}

/// [`cli`] as `app` on `shop`.
pub fn app_cli(addr: SocketAddr, sql: &str, extra: &[&str]) -> Output {
    cli(addr, USER, PASSWORD, DB, sql, extra)
}

/// Options for a `mysql_async` connection to `addr` that talks to `addr` only:
/// no switch to the server's Unix socket (`prefer_socket`), and no settings
/// query after login (`max_allowed_packet` and `wait_timeout` given), so the
/// session carries only the test's own statements.
pub fn opts(addr: SocketAddr, user: &str, password: &str, db: &str) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(user))
        .pass(Some(password))
        .db_name((!db.is_empty()).then_some(db))
        .prefer_socket(false)
        .max_allowed_packet(Some(MAX_PACKET))
        .wait_timeout(Some(28800))
        .into()
}

/// A `mysql_async` connection (see [`opts`]), or the error; 10 s at most.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> mysql_async::Result<mysql_async::Conn> {
    let conn = mysql_async::Conn::new(opts(addr, user, password, db));
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .unwrap_or_else(|_| panic!("no login through {addr} within 10 s"))
}

/// A `mysql_async` connection as `app` on `shop`; panics on failure.
pub async fn app_conn(addr: SocketAddr) -> mysql_async::Conn {
    connect(addr, USER, PASSWORD, DB)
        .await
        .unwrap_or_else(|e| panic!("login through {addr}: {e}"))
}

/// The initialised template: `data/` (system tables only), `cert.pem` and
/// `key.pem`. Built once per MariaDB version; a concurrent builder's result is
/// taken if it finished first.
fn template() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let version = Command::new(binary("mariadbd"))
                .arg("--version")
                .output()
                .expect("mariadbd is installed (apt-get install mariadb-server; .ci/run does it)");
            let version: String = String::from_utf8_lossy(&version.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("unknown")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let done = base.join(format!("mariadb-template-{version}"));
            if done.join("ready").exists() {
                return done;
            }
            let tmp = base.join(format!("mariadb-template-{version}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).unwrap();
            init_template(&tmp);
            std::fs::write(tmp.join("ready"), b"").unwrap();
            if std::fs::rename(&tmp, &done).is_err() {
                // Another test binary got there first (or a stale, unfinished
                // one is in the way).
                if !done.join("ready").exists() {
                    let _ = std::fs::remove_dir_all(&done);
                    if std::fs::rename(&tmp, &done).is_ok() {
                        return done;
                    }
                }
                let _ = std::fs::remove_dir_all(&tmp);
            }
            done
        })
        .clone()
}

fn init_template(dir: &Path) {
    let mut cmd = Command::new("mariadb-install-db");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .args(SERVER_OPTS);
    if running_as_root() {
        cmd.arg("--user=root");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("mariadb-install-db is installed (apt-get install mariadb-server)");
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .args(["-days", "3650", "-subj", "/CN=localhost"])
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI is installed");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dst = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dst)?;
        } else {
            std::fs::copy(entry.path(), dst)?;
        }
    }
    Ok(())
}

/// `mariadbd` lives in /usr/sbin, which a non-root PATH may lack.
fn binary(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

/// mariadbd refuses to run as root unless told `--user=root`.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
