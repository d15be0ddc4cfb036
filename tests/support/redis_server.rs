//! Real `redis-server` processes for the Redis proxy tests (`.ci/run` installs
//! the Debian package), a RESP reader for raw exchanges, and the filter's config.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a loopback port with no persistence, killed on drop.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts one with extra arguments (e.g. `--requirepass x`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let port = super::closed_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(port, &extra);
        let s = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            extra,
        };
        s.wait_up().await;
        s
    }

    /// Kills the server (its keys are lost).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.addr.port(), &self.extra);
        self.wait_up().await;
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection straight to this server.
    pub async fn direct(&self) -> redis::aio::MultiplexedConnection {
        connect(
            self.addr,
            self.extra
                .iter()
                .position(|a| a == "--requirepass")
                .map(|i| self.extra[i + 1].as_str()),
        )
        .await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server; .ci/run does it)")
}

/// A client connection (through a proxy or straight to a server).
pub async fn connect(
    addr: SocketAddr,
    password: Option<&str>,
) -> redis::aio::MultiplexedConnection {
    let url = match password {
        Some(p) => format!("redis://:{p}@{addr}/"),
        None => format!("redis://{addr}/"),
    };
    let client = redis::Client::open(url).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Sends raw bytes and reads until `n` whole replies arrived or the peer closed;
/// returns the bytes read and whether the peer closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], n: usize) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if count_replies(&out) >= n {
            return (out, false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(k)) => out.extend_from_slice(&buf[..k]),
            Err(_) => panic!("timed out after {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

/// One RESP2 connection kept open: each call sends a command and returns its
/// reply as text.
pub struct RawConn(tokio::net::TcpStream);

impl RawConn {
    pub async fn open(addr: SocketAddr) -> RawConn {
        RawConn(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    pub async fn cmd(&mut self, args: &[&str]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.0.write_all(&command(args)).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while count_replies(&out) < 1 {
            let n = tokio::time::timeout(Duration::from_secs(5), self.0.read(&mut buf))
                .await
                .expect("no reply")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Whole top-level RESP2 replies in `b`.
fn count_replies(b: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while let Some(next) = skip(b, i) {
        n += 1;
        i = next;
    }
    n
}

fn skip(b: &[u8], i: usize) -> Option<usize> {
    let end = i + b.get(i..)?.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[i + 1..end]).ok()?;
    let next = end + 2;
    match *b.get(i)? {
        b'+' | b'-' | b':' => Some(next),
        b'$' => {
            let len: i64 = line.parse().ok()?;
            if len < 0 {
                return Some(next);
            }
            let stop = next + len as usize + 2;
            (b.len() >= stop).then_some(stop)
        }
        b'*' => {
            let len: i64 = line.parse().ok()?;
            let mut j = next;
            for _ in 0..len.max(0) {
                j = skip(b, j)?;
            }
            Some(j)
        }
        _ => None,
    }
}

/// A RESP2 command.
pub fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A listener named `redis` with `envoy.filters.network.redis_proxy`, stat prefix
/// `rp`; `body` is the rest of the filter's config (settings, prefix_routes...).
pub fn listener(body: &str) -> String {
    format!(
        r#"
  - name: redis
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: rp
{body}"#
    )
}

/// A cluster of Redis servers sharded by `lb_policy` (MAGLEV, RING_HASH).
pub fn cluster(name: &str, servers: &[&RedisServer], lb_policy: &str, extra: &str) -> String {
    let eps: Vec<(SocketAddr, u32)> = servers.iter().map(|s| (s.addr, 1)).collect();
    super::cluster(name, &eps, &format!("    lb_policy: {lb_policy}\n{extra}"))
}

/// Sends raw bytes and reads until the peer closes or stays silent for 150 ms;
/// returns the bytes and whether it closed.
pub async fn raw_until_idle(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(k)) => out.extend_from_slice(&buf[..k]),
            Err(_) => return (out, false),
        }
    }
}
