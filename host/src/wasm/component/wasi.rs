//! The WASI 0.2 calls that toolchains make from `wasm32-wasip2` components:
//! clocks, randomness, environment, exit, and stdout/stderr (into the log).
//! Nothing else is granted: files, sockets and polling trap when called.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{ComponentType, Lift, Linker, Lower, Resource};

use super::CState;

/// `wasi:clocks/wall-clock.datetime`.
#[derive(ComponentType, Lower)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

/// WASI resources (`output-stream`, `error`, ...) are all of this host type,
/// as wasmtime's stubs for the ungranted calls define them; an output
/// stream's rep says which: 1 stdout, 2 stderr.
type WasiResource = Resource<()>;

/// `wasi:io/streams.stream-error`.
#[allow(dead_code)]
#[derive(ComponentType, Lower, Lift)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(WasiResource),
    #[component(name = "closed")]
    Closed,
}

const STDOUT: u32 = 1;
const STDERR: u32 = 2;

fn random(len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len.min(1 << 20) as usize];
    if getrandom::fill(&mut b).is_err() {
        fastrand::fill(&mut b);
    }
    b
}

/// A guest's write to stdout or stderr: whole lines go to the log.
fn print(st: &mut CState, stream: u32, bytes: &[u8]) {
    let plugin = st.plugin.clone();
    let buf = &mut st.stdio[usize::from(stream == STDERR)];
    buf.extend_from_slice(bytes);
    // Lines, and whatever a guest writes without one past 4 KiB.
    while let Some(end) = buf
        .iter()
        .position(|b| *b == b'\n')
        .map(|n| n + 1)
        .or((buf.len() > 4096).then_some(buf.len()))
    {
        let line: Vec<u8> = buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if stream == STDERR {
            tracing::warn!(plugin = %plugin.name, "{text}");
        } else {
            tracing::info!(plugin = %plugin.name, "{text}");
        }
    }
}

/// The process's monotonic origin for `wasi:clocks/monotonic-clock`.
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The WASI interfaces legate implements (in part, for streams).
const GRANTED: [&str; 11] = [
    "wasi:random/insecure-seed",
    "wasi:random/insecure",
    "wasi:random/random",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:io/streams",
    "wasi:io/poll",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
];

/// Defines what legate grants of the WASI interface a component imports as
/// `name` (e.g. `wasi:random/insecure-seed@0.2.6`).
pub(super) fn define(linker: &mut Linker<CState>, name: &str) -> wasmtime::Result<()> {
    let iface = name.split_once('@').map_or(name, |(i, _)| i);
    if !GRANTED.contains(&iface) {
        return Ok(());
    }
    let mut i = linker.instance(name)?;
    match iface {
        "wasi:random/insecure-seed" => {
            i.func_wrap("insecure-seed", |_, ()| {
                Ok(((fastrand::u64(..), fastrand::u64(..)),))
            })?;
        }
        "wasi:random/insecure" => {
            i.func_wrap("get-insecure-random-bytes", |_, (len,): (u64,)| {
                let mut b = vec![0u8; len.min(1 << 20) as usize];
                fastrand::fill(&mut b);
                Ok((b,))
            })?;
            i.func_wrap("get-insecure-random-u64", |_, ()| Ok((fastrand::u64(..),)))?;
        }
        "wasi:random/random" => {
            i.func_wrap("get-random-bytes", |_, (len,): (u64,)| Ok((random(len),)))?;
            i.func_wrap("get-random-u64", |_, ()| {
                let b = random(8);
                Ok((u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),))
            })?;
        }
        "wasi:clocks/wall-clock" => {
            i.func_wrap("now", |_, ()| {
                let d = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Ok((Datetime {
                    seconds: d.as_secs(),
                    nanoseconds: d.subsec_nanos(),
                },))
            })?;
            i.func_wrap("resolution", |_, ()| {
                Ok((Datetime {
                    seconds: 0,
                    nanoseconds: 1_000,
                },))
            })?;
        }
        "wasi:clocks/monotonic-clock" => {
            i.func_wrap("now", |_, ()| Ok((origin().elapsed().as_nanos() as u64,)))?;
            i.func_wrap("resolution", |_, ()| Ok((1_000u64,)))?;
        }
        "wasi:cli/environment" => {
            i.func_wrap("get-environment", |c, ()| {
                Ok((c.data().plugin.environment.clone(),))
            })?;
            i.func_wrap("get-arguments", |_, ()| Ok((Vec::<String>::new(),)))?;
            i.func_wrap("initial-cwd", |_, ()| Ok((None::<String>,)))?;
        }
        "wasi:cli/exit" => {
            i.func_wrap(
                "exit",
                |_, (status,): (Result<(), ()>,)| -> wasmtime::Result<()> {
                    Err(wasmtime::Error::msg(format!(
                        "the filter called exit({})",
                        if status.is_ok() { "ok" } else { "err" }
                    )))
                },
            )?;
        }
        "wasi:io/streams" => {
            i.func_wrap(
                "[method]output-stream.check-write",
                |_, (_s,): (WasiResource,)| Ok((Ok::<u64, StreamError>(65536),)),
            )?;
            for write in ["write", "blocking-write-and-flush"] {
                i.func_wrap(
                    &format!("[method]output-stream.{write}"),
                    |mut c, (s, bytes): (WasiResource, Vec<u8>)| {
                        print(c.data_mut(), s.rep(), &bytes);
                        Ok((Ok::<(), StreamError>(()),))
                    },
                )?;
            }
            // Stdout and stderr are always writable.
            i.func_wrap(
                "[method]output-stream.subscribe",
                |_, (_s,): (WasiResource,)| Ok((WasiResource::new_own(0),)),
            )?;
            for flush in ["flush", "blocking-flush"] {
                i.func_wrap(
                    &format!("[method]output-stream.{flush}"),
                    |_, (_s,): (WasiResource,)| Ok((Ok::<(), StreamError>(()),)),
                )?;
            }
        }
        "wasi:io/poll" => {
            // The only pollables granted are stdout's and stderr's: always ready.
            i.func_wrap("poll", |_, (ps,): (Vec<WasiResource>,)| {
                Ok(((0..ps.len() as u32).collect::<Vec<u32>>(),))
            })?;
            i.func_wrap("[method]pollable.ready", |_, (_p,): (WasiResource,)| {
                Ok((true,))
            })?;
            i.func_wrap("[method]pollable.block", |_, (_p,): (WasiResource,)| Ok(()))?;
        }
        "wasi:cli/stdout" => {
            i.func_wrap("get-stdout", |_, ()| Ok((WasiResource::new_own(STDOUT),)))?;
        }
        "wasi:cli/stderr" => {
            i.func_wrap("get-stderr", |_, ()| Ok((WasiResource::new_own(STDERR),)))?;
        }
        _ => {}
    }
    Ok(())
}
