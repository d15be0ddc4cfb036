//! Shutdown: SIGTERM and /quitquitquit stop accepting, let in-flight requests
//! finish, and exit 0; `--drain-time-s` bounds the wait.

mod support;

use std::time::{Duration, Instant};

use support::*;

async fn start(extra: &[&str]) -> (Legate, std::net::SocketAddr) {
    let up = echo_upstream("up").await;
    let routes = "              - match: {prefix: \"/\"}\n                route: {cluster: up, timeout: 30s}\n";
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", routes, ""),
        &cluster("up", &[(up, 1)], ""),
    );
    let l = Legate::start_with(&yaml, extra).await;
    let a = l.listener("ingress").await;
    (l, a)
}

async fn wait_exit(l: &mut Legate, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = l.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "legate did not exit in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm(l: &Legate) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &l.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let (mut l, a) = start(&["--concurrency", "2"]).await;
    let inflight = tokio::spawn(async move { http_get(a, "/sleep/1000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&l);
    let (status, body) = inflight.await.unwrap().unwrap();
    assert_eq!(status, 200, "the in-flight request was cut: {body}");
    assert!(body.contains("\"path\":\"/sleep/1000\""));
    let st = wait_exit(&mut l, Duration::from_secs(10)).await;
    assert_eq!(st.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(a).await.is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_drains_and_exits() {
    let (mut l, a) = start(&["--concurrency", "1"]).await;
    let inflight = tokio::spawn(async move { http_get(a, "/sleep/800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        http_post(l.admin, "/quitquitquit").await.unwrap(),
        (200, "OK\n".into())
    );
    let (status, _) = inflight.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        wait_exit(&mut l, Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_time_bounds_shutdown() {
    let (mut l, a) = start(&["--concurrency", "1", "--drain-time-s", "1"]).await;
    let _hung = tokio::spawn(async move { http_get(a, "/sleep/20000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    sigterm(&l);
    let st = wait_exit(&mut l, Duration::from_secs(5)).await;
    assert_eq!(st.code(), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "exited before the drain time"
    );
}
