//! Config reload: SIGHUP or an edited config file put a new config in force for
//! new connections without dropping any; a bad config keeps the old one serving.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;

fn config(up: std::net::SocketAddr, body: &str, extra_listener: &str) -> String {
    let routes = format!(
        "              - match: {{prefix: \"/direct\"}}\n                direct_response: {{status: 200, body: {{inline_string: \"{body}\"}}}}\n              - match: {{prefix: \"/\"}}\n                route: {{cluster: up}}\n                response_headers_to_add: [{{header: {{key: x-version, value: \"{body}\"}}}}]\n"
    );
    bootstrap(
        &(http_listener("ingress", "ingress", &routes, "") + extra_listener),
        &cluster("up", &[(up, 1)], ""),
    )
}

/// Starts an upstream (on this test's runtime) and legate in front of it.
async fn start(body: &str) -> (Legate, std::net::SocketAddr, std::net::SocketAddr) {
    let up = echo_upstream("up").await;
    let l = Legate::start(&config(up, body, "")).await;
    let a = l.listener("ingress").await;
    (l, a, up)
}

fn write_config(l: &Legate, yaml: &str) {
    // Write then rename, as deploy tools do, so the watcher never sees half a file.
    let tmp = l.dir.path().join("next.yaml");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, l.dir.path().join("legate.yaml")).unwrap();
}

fn sighup(l: &Legate) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &l.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn wait_body(addr: std::net::SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = http_get(addr, "/direct").await.unwrap();
        if s == 200 && b == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {want:?}, last {s} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_edits_reload() {
    let (l, addr, up) = start("v1").await;
    assert_eq!(http_get(addr, "/direct").await.unwrap(), (200, "v1".into()));

    write_config(&l, &config(up, "v2", ""));
    sighup(&l);
    wait_body(addr, "v2").await;
    // Same listener, same socket: the address did not change.
    assert_eq!(l.listener("ingress").await, addr);

    // An edit alone is noticed by the file watcher.
    write_config(&l, &config(up, "v3", ""));
    wait_body(addr, "v3").await;
    let (_, info) = http_get(l.admin, "/server_info").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["config_version"], 3);
    assert_eq!(l.stat("server.config_reload").await, 2);
    assert_eq!(l.stat("server.config_version").await, 3);

    // The same bytes written again change the file's times, not the config:
    // no reload.
    write_config(&l, &config(up, "v3", ""));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(l.stat("server.config_reload").await, 2);
    assert_eq!(l.stat("server.config_version").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_keeps_the_old_one() {
    let (l, addr, up) = start("good").await;
    write_config(
        &l,
        &config(up, "good", "")
            .replace("lb_policy", "lb_polcy")
            .replace(
                "connect_timeout: 1s",
                "connect_timeout: 1s\n    lb_polcy: ROUND_ROBIN",
            ),
    );
    sighup(&l);
    let deadline = Instant::now() + Duration::from_secs(10);
    while l.stat("server.config_reload_failed").await < 1 {
        assert!(Instant::now() < deadline, "the bad config was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http_get(addr, "/direct").await.unwrap(),
        (200, "good".into())
    );
    assert_eq!(l.stat("server.config_version").await, 1);
    assert!(
        l.stderr_text()
            .contains("unknown field \"lb_polcy\"; did you mean \"lb_policy\"?"),
        "{}",
        l.stderr_text()
    );
    // Moving the admin listener is refused too, not ignored.
    let moved = config(up, "moved", "").replacen("port_value: 0}}", "port_value: 1}}", 1);
    assert!(
        moved.starts_with(
            "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 1}}"
        )
    );
    write_config(&l, &moved);
    sighup(&l);
    while l.stat("server.config_reload_failed").await < 2 {
        assert!(Instant::now() < deadline, "the admin move was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(l.stderr_text().contains("admin.address changed"));
    assert_eq!(
        http_get(addr, "/direct").await.unwrap(),
        (200, "good".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing() {
    let (l, addr, up) = start("r0").await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(String::new()));
    let mut clients = Vec::new();
    // A bounded load loop: 8 clients until told to stop, 30 s at most.
    for _ in 0..8 {
        let (stop, ok, failed, last) = (stop.clone(), ok.clone(), failed.clone(), last.clone());
        clients.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                match client
                    .get(format!("http://{addr}/x").parse().unwrap())
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let v = r
                            .headers()
                            .get("x-version")
                            .map(|v| v.to_str().unwrap().to_string());
                        use http_body_util::BodyExt;
                        if r.into_body().collect().await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if let Some(v) = v {
                                *last.lock().unwrap() = v;
                            }
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for i in 1..=5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        write_config(&l, &config(up, &format!("r{i}"), ""));
        sighup(&l);
        wait_body(addr, &format!("r{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load loop too small: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        *last.lock().unwrap(),
        "r5",
        "responses follow the new config"
    );
    assert_eq!(l.stat("server.config_reload").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_streams_finish_and_listeners_come_and_go() {
    let (l, addr, up) = start("a").await;
    let inflight = tokio::spawn(async move { http_get(addr, "/sleep/1000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A second listener appears.
    let second = http_listener(
        "second",
        "second",
        "              - match: {prefix: \"/\"}\n                direct_response: {status: 200, body: {inline_string: \"second\"}}\n",
        "",
    );
    write_config(&l, &config(up, "b", &second));
    sighup(&l);
    wait_body(addr, "b").await;
    let (status, body) = inflight.await.unwrap().unwrap();
    assert_eq!(
        status, 200,
        "the in-flight request finished on its old config"
    );
    assert!(body.contains("/sleep/1000"));
    let s2 = l.listener("second").await;
    assert_eq!(http_get(s2, "/").await.unwrap(), (200, "second".into()));
    // And goes away again: its port stops accepting.
    write_config(&l, &config(up, "c", ""));
    sighup(&l);
    wait_body(addr, "c").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(s2).await.is_ok() {
        assert!(Instant::now() < deadline, "removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
