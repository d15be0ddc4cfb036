//! Access loggers: format a finished stream or connection and hand the line to a
//! writer thread, so workers never block on disk.

pub mod format;

use std::collections::HashMap;
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use format::LogContext;

use crate::config::{AccessLog, AccessLogFormat, AccessLogSink, JsonFormatValue};
use crate::stats::{Counter, store};

/// Lines queued per sink before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// One writer thread per destination, shared by every logger writing there.
#[derive(Clone)]
struct Sink {
    tx: SyncSender<String>,
    dropped: Counter,
}

fn writer(rx: Receiver<String>, mut out: Box<dyn Write + Send>) {
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        // Drain what is queued, then flush once: one write per burst.
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        let _ = out.flush();
    }
}

/// Opens sinks once per destination for the life of the process.
#[derive(Default)]
pub struct Sinks {
    open: Mutex<HashMap<String, Sink>>,
}

static SINKS: std::sync::LazyLock<Sinks> = std::sync::LazyLock::new(Sinks::default);

impl Sinks {
    fn get(&self, dest: &AccessLogSink) -> std::io::Result<Sink> {
        let key = match dest {
            AccessLogSink::File(p) => format!("file:{p}"),
            AccessLogSink::Stdout => "stdout".into(),
            AccessLogSink::Stderr => "stderr".into(),
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = open.get(&key) {
            return Ok(s.clone());
        }
        let out: Box<dyn Write + Send> = match dest {
            AccessLogSink::File(p) => Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            AccessLogSink::Stdout => Box::new(std::io::stdout()),
            AccessLogSink::Stderr => Box::new(std::io::stderr()),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))?;
        let sink = Sink {
            tx,
            dropped: store().counter("access_log.dropped_lines"),
        };
        open.insert(key, sink.clone());
        Ok(sink)
    }
}

/// A configured access log: its format and where lines go.
#[derive(Clone)]
pub struct AccessLogger {
    format: Arc<AccessLog>,
    sink: Sink,
}

impl AccessLogger {
    pub fn new(cfg: Arc<AccessLog>) -> std::io::Result<AccessLogger> {
        let sink = SINKS.get(&cfg.sink)?;
        Ok(AccessLogger { format: cfg, sink })
    }

    pub fn log(&self, cx: &LogContext<'_>) {
        let line = match &self.format.format {
            AccessLogFormat::Text(f) => f.render_string(cx, "-"),
            AccessLogFormat::Json(fields) => {
                let mut s = json_object(fields, cx).to_string();
                s.push('\n');
                s
            }
        };
        if let Err(TrySendError::Full(_)) = self.sink.tx.try_send(line) {
            self.sink.dropped.inc();
        }
    }
}

fn json_object(fields: &[(String, JsonFormatValue)], cx: &LogContext<'_>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in fields {
        let value = match v {
            JsonFormatValue::Format(f) => f.render_json(cx),
            JsonFormatValue::Object(inner) => json_object(inner, cx),
        };
        m.insert(k.clone(), value);
    }
    serde_json::Value::Object(m)
}

/// Opens the loggers of a config; an unwritable file is a startup error.
pub fn open(logs: &[Arc<AccessLog>]) -> std::io::Result<Vec<AccessLogger>> {
    logs.iter().map(|l| AccessLogger::new(l.clone())).collect()
}
