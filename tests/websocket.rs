//! WebSocket through legate: a tokio-tungstenite echo upstream and client, the
//! HTTP/1.1 upgrade proxied by an HCM with `upgrade_configs`.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{Legate, bootstrap, cluster, http_listener};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bounds a whole test body.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out");
}

/// Bounds one step.
async fn step<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("step timed out")
}

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// WebSocket handshakes completed.
    handshakes: AtomicUsize,
}

/// Handshake callback: copies the request path and host into the 101 response.
#[allow(clippy::result_large_err)] // the callback signature is tungstenite's
fn reflect_request(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let h = resp.headers_mut();
    h.insert("x-ws-path", req.uri().to_string().parse().unwrap());
    if let Some(host) = req.headers().get("host") {
        h.insert("x-ws-host", host.clone());
    }
    Ok(resp)
}

/// A WebSocket echo server. The 101 response carries `x-ws-path` and `x-ws-host`
/// from the upgrade request it got.
async fn ws_echo() -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            seen2.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, reflect_request).await
                else {
                    return;
                };
                seen.handshakes.fetch_add(1, Ordering::SeqCst);
                // tungstenite answers pings and close frames itself.
                while let Some(Ok(m)) = ws.next().await {
                    if m == Message::text("close-me") {
                        // Server-initiated close handshake.
                        let _ = ws
                            .close(Some(CloseFrame {
                                code: CloseCode::Away,
                                reason: "bye".into(),
                            }))
                            .await;
                        continue;
                    }
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends a raw request and returns the response head (up to the blank line).
async fn response_head(addr: SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = step(TcpStream::connect(addr)).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = step(s.read(&mut chunk)).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn ws_config(upstream: SocketAddr, hcm_extra: &str) -> String {
    bootstrap(
        &http_listener(
            "ws_in",
            "ws",
            "              - match: {prefix: \"/\"}\n                route: {cluster: ws_up}\n",
            hcm_extra,
        ),
        &cluster("ws_up", &[(upstream, 1)], ""),
    )
}

const UPGRADES: &str = "          upgrade_configs: [{upgrade_type: websocket}]";

async fn next_data(ws: &mut Client) -> Message {
    loop {
        let m = step(ws.next())
            .await
            .expect("connection open")
            .expect("message ok");
        if m.is_text() || m.is_binary() {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_proxy() {
    bounded(async {
        let (up, seen) = ws_echo().await;
        let legate = Legate::start(&ws_config(up, UPGRADES)).await;
        let addr = legate.listener("ws_in").await;

        let (mut ws, resp) = step(tokio_tungstenite::connect_async(format!(
            "ws://{addr}/chat/room1?x=1"
        )))
        .await
        .expect("websocket handshake through legate");
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()["x-ws-path"], "/chat/room1?x=1");
        assert_eq!(resp.headers()["x-ws-host"], addr.to_string().as_str());
        assert!(
            resp.headers()["upgrade"]
                .to_str()
                .unwrap()
                .eq_ignore_ascii_case("websocket")
        );
        assert!(resp.headers().contains_key("sec-websocket-accept"));

        // Text, binary, and text again, in order.
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("hello"));
        let bin: Vec<u8> = (0..=255u8).collect();
        ws.send(Message::binary(bin.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::binary(bin));
        // A large message spans many TCP reads and writes.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::binary(big));
        for i in 0..10 {
            ws.send(Message::text(format!("msg {i}"))).await.unwrap();
        }
        for i in 0..10 {
            assert_eq!(next_data(&mut ws).await, Message::text(format!("msg {i}")));
        }
        // Ping is answered by the upstream's pong.
        ws.send(Message::Ping(b"pp".to_vec().into())).await.unwrap();
        let pong = loop {
            let m = step(ws.next()).await.unwrap().unwrap();
            if m.is_pong() {
                break m;
            }
        };
        assert_eq!(pong, Message::Pong(b"pp".to_vec().into()));

        assert_eq!(
            legate.stat("http.ws.downstream_cx_upgrades_active").await,
            1
        );

        // Clean close: our close frame goes out, the upstream's close comes back.
        step(ws.close(None)).await.expect("close sent");
        loop {
            match step(ws.next()).await {
                None => break,
                Some(Ok(Message::Close(_))) => continue,
                Some(Ok(m)) => panic!("unexpected message after close: {m:?}"),
                Some(Err(tungstenite::Error::ConnectionClosed)) => break,
                Some(Err(e)) => panic!("close was not clean: {e}"),
            }
        }

        // The upstream closed its side after the close handshake; once the client
        // socket goes too, the tunnel ends.
        drop(ws);
        assert_eq!(seen.handshakes.load(Ordering::SeqCst), 1);
        assert_eq!(legate.stat("http.ws.downstream_cx_upgrades_total").await, 1);
        assert_eq!(
            legate
                .wait_stat("http.ws.downstream_cx_upgrades_active", 0)
                .await,
            0
        );
        assert_eq!(legate.stat("http.ws.downstream_rq_http1_total").await, 1);
        assert_eq!(legate.stat("cluster.ws_up.upstream_rq_101").await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_websockets_at_once() {
    bounded(async {
        let (up, seen) = ws_echo().await;
        let legate = Legate::start(&ws_config(up, UPGRADES)).await;
        let addr = legate.listener("ws_in").await;
        let url = format!("ws://{addr}/a");
        let (mut a, _) = step(tokio_tungstenite::connect_async(url.as_str()))
            .await
            .unwrap();
        let (mut b, _) = step(tokio_tungstenite::connect_async(url.as_str()))
            .await
            .unwrap();
        b.send(Message::text("to b")).await.unwrap();
        a.send(Message::text("to a")).await.unwrap();
        assert_eq!(next_data(&mut a).await, Message::text("to a"));
        assert_eq!(next_data(&mut b).await, Message::text("to b"));
        assert_eq!(
            legate.stat("http.ws.downstream_cx_upgrades_active").await,
            2
        );
        step(a.close(None)).await.unwrap();
        step(b.close(None)).await.unwrap();
        while let Some(Ok(_)) = step(a.next()).await {}
        while let Some(Ok(_)) = step(b.next()).await {}
        drop((a, b));
        assert_eq!(seen.handshakes.load(Ordering::SeqCst), 2);
        assert_eq!(legate.stat("http.ws.downstream_cx_upgrades_total").await, 2);
        assert_eq!(
            legate
                .wait_stat("http.ws.downstream_cx_upgrades_active", 0)
                .await,
            0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_initiated_close() {
    bounded(async {
        let (up, _) = ws_echo().await;
        let legate = Legate::start(&ws_config(up, UPGRADES)).await;
        let addr = legate.listener("ws_in").await;
        let (mut ws, _) = step(tokio_tungstenite::connect_async(format!("ws://{addr}/")))
            .await
            .unwrap();
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("before"));
        ws.send(Message::text("close-me")).await.unwrap();
        let frame = match step(ws.next()).await {
            Some(Ok(Message::Close(f))) => f,
            Some(Ok(m)) => panic!("unexpected message: {m:?}"),
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        };
        let frame = frame.expect("close frame has a payload");
        assert_eq!(frame.code, CloseCode::Away);
        assert_eq!(frame.reason.as_str(), "bye");
        // tungstenite replied; the upstream then closes TCP and the client sees
        // the end of the stream through the proxy.
        match step(ws.next()).await {
            None | Some(Err(tungstenite::Error::ConnectionClosed)) => {}
            Some(Ok(m)) => panic!("unexpected message after close: {m:?}"),
            Some(Err(e)) => panic!("close was not clean: {e}"),
        }
        drop(ws);
        assert_eq!(
            legate
                .wait_stat("http.ws.downstream_cx_upgrades_active", 0)
                .await,
            0
        );
        assert_eq!(legate.stat("http.ws.downstream_cx_upgrades_total").await, 1);
    })
    .await;
}

/// Without `upgrade_configs` Envoy refuses the upgrade with a local 403
/// (`upgrade_failed`, counted in `downstream_rq_ws_on_non_ws_route`) and never
/// forwards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_refused_without_upgrade_configs() {
    bounded(async {
        let (up, seen) = ws_echo().await;
        let legate = Legate::start(&ws_config(up, "")).await;
        let addr = legate.listener("ws_in").await;

        let r = step(tokio_tungstenite::connect_async(format!(
            "ws://{addr}/chat"
        )))
        .await;
        let status = match r {
            Ok((_, resp)) => panic!(
                "upgrade must not happen without upgrade_configs, got {} (upstream handshakes: {})",
                resp.status(),
                seen.handshakes.load(Ordering::SeqCst)
            ),
            Err(tungstenite::Error::Http(resp)) => resp.status(),
            Err(e) => panic!("expected an HTTP error response, got {e}"),
        };
        assert_eq!(status, 403);
        assert_eq!(seen.handshakes.load(Ordering::SeqCst), 0);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
        assert_eq!(legate.stat("http.ws.downstream_cx_upgrades_total").await, 0);
        assert_eq!(legate.wait_stat("http.ws.downstream_rq_4xx", 1).await, 1);
        assert_eq!(
            legate
                .stat("http.ws.downstream_rq_ws_on_non_ws_route")
                .await,
            1
        );
    })
    .await;
}

/// An upgrade type not listed in `upgrade_configs` is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrade_type_refused() {
    bounded(async {
        let (up, seen) = ws_echo().await;
        let legate = Legate::start(&ws_config(up, UPGRADES)).await;
        let addr = legate.listener("ws_in").await;
        let head = response_head(
            addr,
            &format!(
                "GET /x HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 403"), "got {head:?}");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
        assert_eq!(legate.stat("http.ws.downstream_cx_upgrades_total").await, 0);
    })
    .await;
}
