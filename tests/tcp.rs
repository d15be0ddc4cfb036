//! `envoy.filters.network.tcp_proxy` through the real binary: raw TCP echo,
//! half-close, connect failure, idle timeout and weighted clusters.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tcp_listener(name: &str, proxy: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
{proxy}
"#
    )
}

async fn start(proxy: &str, clusters: &str) -> (Legate, SocketAddr) {
    let l = Legate::start(&bootstrap(&tcp_listener("tcp", proxy), clusters)).await;
    let a = l.listener("tcp").await;
    (l, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_tcp_proxy() {
    let echo = tcp_echo().await;
    let (l, addr) = start(
        "          stat_prefix: echo\n          cluster: echo",
        &cluster("echo", &[(echo, 1)], ""),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        // Half-close: the echo must still come back after we stop sending.
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let read = async {
        tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut got))
            .await
            .expect("echo timed out")
            .unwrap();
    };
    tokio::join!(write, read);
    assert_eq!(got, payload);
    assert_eq!(l.wait_stat("tcp.echo.downstream_cx_total", 1).await, 1);
    assert_eq!(
        l.wait_stat("tcp.echo.downstream_cx_rx_bytes_total", 200_000)
            .await,
        200_000
    );
    assert_eq!(
        l.stat("tcp.echo.downstream_cx_tx_bytes_total").await,
        200_000
    );
    assert_eq!(l.stat("cluster.echo.upstream_cx_total").await, 1);
    assert_eq!(l.wait_stat("cluster.echo.upstream_cx_active", 0).await, 0);
    // Named by the configured address, port 0 included, as Envoy does.
    assert_eq!(l.stat("listener.127.0.0.1_0.downstream_cx_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_closes_the_client() {
    let dead: SocketAddr = dead_addr();
    let (l, addr) = start(
        "          stat_prefix: dead\n          cluster: dead",
        &cluster("dead", &[(dead, 1)], ""),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("connection was not closed");
    assert!(
        n.is_err() || buf.is_empty(),
        "no bytes from a dead upstream"
    );
    assert_eq!(
        l.wait_stat("cluster.dead.upstream_cx_connect_fail", 1)
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_quiet_connections() {
    let echo = tcp_echo().await;
    let (l, addr) = start(
        "          stat_prefix: idle\n          cluster: echo\n          idle_timeout: 0.3s",
        &cluster("echo", &[(echo, 1)], ""),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "idle connection was not closed");
    assert_eq!(l.wait_stat("tcp.idle.idle_timeout", 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_tcp_clusters() {
    // Two upstreams that each answer with their own name and close.
    async fn named(name: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.write_all(name).await;
                let _ = s.shutdown().await;
            }
        });
        a
    }
    let a = named(b"a").await;
    let b = named(b"b").await;
    let (_l, addr) = start(
        "          stat_prefix: w\n          weighted_clusters:\n            clusters: [{name: a, weight: 1}, {name: b, weight: 1}]",
        &(cluster("a", &[(a, 1)], "") + &cluster("b", &[(b, 1)], "")),
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        seen.insert(got);
    }
    assert_eq!(seen.len(), 2, "both clusters were used: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_chain_match_destination_port() {
    let echo = tcp_echo().await;
    // A chain for another port never matches; the default chain does.
    let proxy = "          stat_prefix: other\n          cluster: echo";
    let yaml = bootstrap(
        &format!(
            r#"
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filter_chain_match: {{destination_port: 1}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: never
          cluster: echo
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
{proxy}
"#
        ),
        &cluster("echo", &[(echo, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("tcp").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(l.wait_stat("tcp.other.downstream_cx_total", 1).await, 1);
    assert_eq!(l.stat("tcp.never.downstream_cx_total").await, 0);
}
