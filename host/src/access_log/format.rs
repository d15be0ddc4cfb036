//! Envoy's substitution format strings (`%REQ(:PATH)%`, `%RESPONSE_CODE%`, ...),
//! shared by access logs and by header values such as `%DOWNSTREAM_REMOTE_ADDRESS%`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use legate_filter_api::ResponseFlags;

/// Everything a format operator may read. Fields that do not apply are `None`.
#[derive(Default, Clone)]
pub struct LogContext<'a> {
    pub start_time: Option<SystemTime>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub scheme: Option<&'a str>,
    pub protocol: Option<&'static str>,
    pub request_headers: Option<&'a HeaderMap>,
    pub response_headers: Option<&'a HeaderMap>,
    pub response_trailers: Option<&'a HeaderMap>,
    pub response_code: Option<u16>,
    pub response_code_details: Option<&'a str>,
    pub response_flags: ResponseFlags,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Option<Duration>,
    pub request_duration: Option<Duration>,
    pub response_duration: Option<Duration>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local_address: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_transport_failure_reason: Option<&'a str>,
    pub downstream_remote_address: Option<SocketAddr>,
    pub downstream_direct_remote_address: Option<SocketAddr>,
    pub downstream_local_address: Option<SocketAddr>,
    pub route_name: Option<&'a str>,
    pub connection_id: Option<u64>,
    pub local_reply_body: Option<&'a str>,
    pub upstream_request_attempt_count: Option<u32>,
    /// The stream's filter state, for `%FILTER_STATE(...)%`.
    pub filter_state: &'a [(
        String,
        std::rc::Rc<dyn legate_filter_api::FilterStateObject>,
    )],
}

#[derive(Debug, Clone, Copy)]
enum Addr {
    Remote,
    DirectRemote,
    Local,
    Upstream,
    UpstreamLocal,
}

#[derive(Debug, Clone, Copy)]
enum AddrPart {
    Full,
    NoPort,
    Port,
}

#[derive(Debug, Clone)]
enum Op {
    Literal(String),
    StartTime(Option<String>),
    Req(String, Option<String>, Option<usize>),
    Resp(String, Option<String>, Option<usize>),
    Trailer(String, Option<String>, Option<usize>),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    Address(Addr, AddrPart),
    UpstreamCluster,
    UpstreamTransportFailureReason,
    RouteName,
    ConnectionId,
    Hostname,
    LocalReplyBody,
    AttemptCount,
    /// `%FILTER_STATE(key[:PLAIN|:TYPED])%`: `plain`, and the length limit.
    FilterState(String, bool, Option<usize>),
}

/// A parsed format string.
#[derive(Debug, Clone)]
pub struct Format {
    ops: Vec<Op>,
}

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

fn header_args(args: &str, tail: &str) -> Result<(String, Option<String>, Option<usize>), String> {
    let (main, alt) = match args.split_once('?') {
        Some((a, b)) => (a.to_string(), Some(b.to_ascii_lowercase())),
        None => (args.to_string(), None),
    };
    let max = match tail.strip_prefix(':') {
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| format!("invalid length \"{n}\""))?,
        ),
        None if tail.is_empty() => None,
        None => return Err(format!("unexpected \"{tail}\" after the operator")),
    };
    Ok((main.to_ascii_lowercase(), alt, max))
}

fn parse_op(cmd: &str) -> Result<Op, String> {
    // COMMAND(args):len
    let (name, args, tail) = match cmd.find('(') {
        Some(i) => {
            let close = cmd[i..]
                .find(')')
                .ok_or_else(|| format!("missing ')' in %{cmd}%"))?
                + i;
            (&cmd[..i], Some(&cmd[i + 1..close]), &cmd[close + 1..])
        }
        None => (cmd, None, ""),
    };
    let plain = |op: Op| {
        if args.is_some() || !tail.is_empty() {
            Err(format!("%{name}% takes no arguments"))
        } else {
            Ok(op)
        }
    };
    use Addr::*;
    use AddrPart::*;
    match name {
        "START_TIME" => Ok(Op::StartTime(args.map(str::to_string))),
        "REQ" | "RESP" | "TRAILER" => {
            let a =
                args.ok_or_else(|| format!("%{name}% needs a header name, e.g. %{name}(x-foo)%"))?;
            let (h, alt, max) = header_args(a, tail)?;
            Ok(match name {
                "REQ" => Op::Req(h, alt, max),
                "RESP" => Op::Resp(h, alt, max),
                _ => Op::Trailer(h, alt, max),
            })
        }
        "PROTOCOL" => plain(Op::Protocol),
        "RESPONSE_CODE" => plain(Op::ResponseCode),
        "RESPONSE_CODE_DETAILS" => plain(Op::ResponseCodeDetails),
        "RESPONSE_FLAGS" => plain(Op::ResponseFlags),
        "BYTES_RECEIVED" => plain(Op::BytesReceived),
        "BYTES_SENT" => plain(Op::BytesSent),
        "DURATION" => plain(Op::Duration),
        "REQUEST_DURATION" => plain(Op::RequestDuration),
        "RESPONSE_DURATION" => plain(Op::ResponseDuration),
        "UPSTREAM_HOST" => plain(Op::Address(Upstream, Full)),
        "UPSTREAM_LOCAL_ADDRESS" => plain(Op::Address(UpstreamLocal, Full)),
        "UPSTREAM_CLUSTER" => plain(Op::UpstreamCluster),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => plain(Op::UpstreamTransportFailureReason),
        "DOWNSTREAM_REMOTE_ADDRESS" => plain(Op::Address(Remote, Full)),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => plain(Op::Address(Remote, NoPort)),
        "DOWNSTREAM_REMOTE_PORT" => plain(Op::Address(Remote, Port)),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => plain(Op::Address(DirectRemote, Full)),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => plain(Op::Address(DirectRemote, NoPort)),
        "DOWNSTREAM_LOCAL_ADDRESS" => plain(Op::Address(Local, Full)),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => plain(Op::Address(Local, NoPort)),
        "DOWNSTREAM_LOCAL_PORT" => plain(Op::Address(Local, Port)),
        "ROUTE_NAME" => plain(Op::RouteName),
        "CONNECTION_ID" => plain(Op::ConnectionId),
        "HOSTNAME" => plain(Op::Hostname),
        "LOCAL_REPLY_BODY" => plain(Op::LocalReplyBody),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => plain(Op::AttemptCount),
        "FILTER_STATE" => {
            let a = args.ok_or("%FILTER_STATE% needs a key, e.g. %FILTER_STATE(my.key)%")?;
            let mut parts = a.split(':');
            let key = parts.next().unwrap_or_default().to_string();
            let plain = match parts.next() {
                None | Some("TYPED") => false,
                Some("PLAIN") => true,
                Some(f) => {
                    return Err(format!(
                        "%FILTER_STATE({a})%: unknown format \"{f}\" (expected PLAIN or TYPED)"
                    ));
                }
            };
            if parts.next().is_some() {
                return Err(format!(
                    "%FILTER_STATE({a})%: selecting a field is not supported by legate"
                ));
            }
            let max = match tail.strip_prefix(':') {
                Some(n) => Some(
                    n.parse::<usize>()
                        .map_err(|_| format!("invalid length \"{n}\""))?,
                ),
                None if tail.is_empty() => None,
                None => return Err(format!("unexpected \"{tail}\" after the operator")),
            };
            Ok(Op::FilterState(key, plain, max))
        }
        _ => Err(format!("unsupported command operator %{cmd}%")),
    }
}

impl Format {
    /// Parses a format string; `%%` is a literal `%`.
    pub fn parse(s: &str) -> Result<Format, String> {
        let mut ops = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let end = rest
                .find('%')
                .ok_or_else(|| format!("unterminated command operator in \"{s}\""))?;
            if !lit.is_empty() {
                ops.push(Op::Literal(std::mem::take(&mut lit)));
            }
            ops.push(parse_op(&rest[..end])?);
            rest = &rest[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            ops.push(Op::Literal(lit));
        }
        Ok(Format { ops })
    }

    pub fn default_access_log() -> Format {
        Format::parse(DEFAULT_FORMAT).expect("default format parses")
    }

    /// Whether the format is a plain string with no operators.
    pub fn literal(&self) -> Option<&str> {
        match self.ops.as_slice() {
            [] => Some(""),
            [Op::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders as text; missing values print `-` (header values print nothing).
    pub fn render(&self, cx: &LogContext<'_>, out: &mut String, missing: &str) {
        for op in &self.ops {
            match op {
                Op::Literal(s) => out.push_str(s),
                op => {
                    if !render_op(op, cx, out) {
                        out.push_str(missing);
                    }
                }
            }
        }
    }

    pub fn render_string(&self, cx: &LogContext<'_>, missing: &str) -> String {
        let mut s = String::new();
        self.render(cx, &mut s, missing);
        s
    }

    /// Renders for `json_format`: a lone numeric operator stays a number, a lone
    /// missing value is `null`.
    pub fn render_json(&self, cx: &LogContext<'_>) -> serde_json::Value {
        if let [op] = self.ops.as_slice() {
            let num = match op {
                Op::ResponseCode => cx.response_code.map(u64::from),
                Op::BytesReceived => Some(cx.bytes_received),
                Op::BytesSent => Some(cx.bytes_sent),
                Op::Duration => cx.duration.map(|d| d.as_millis() as u64),
                Op::RequestDuration => cx.request_duration.map(|d| d.as_millis() as u64),
                Op::ResponseDuration => cx.response_duration.map(|d| d.as_millis() as u64),
                Op::ConnectionId => cx.connection_id,
                Op::AttemptCount => cx.upstream_request_attempt_count.map(u64::from),
                Op::Literal(s) => return s.clone().into(),
                // The typed value is JSON, and stays JSON in a JSON log.
                Op::FilterState(key, false, None) => {
                    return filter_state(cx, key, false)
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .unwrap_or(serde_json::Value::Null);
                }
                _ => {
                    let mut s = String::new();
                    return if render_op(op, cx, &mut s) {
                        s.into()
                    } else {
                        serde_json::Value::Null
                    };
                }
            };
            return match num {
                Some(n) => n.into(),
                None => serde_json::Value::Null,
            };
        }
        self.render_string(cx, "-").into()
    }
}

fn header<'h>(map: Option<&'h HeaderMap>, name: &str, alt: &Option<String>) -> Option<&'h str> {
    let map = map?;
    let get = |n: &str| map.get(n).and_then(|v| v.to_str().ok());
    get(name).or_else(|| alt.as_deref().and_then(get))
}

fn pseudo<'a>(cx: &LogContext<'a>, name: &str) -> Option<&'a str> {
    match name {
        ":method" => cx.method,
        ":path" => cx.path,
        ":authority" => cx.authority,
        ":scheme" => cx.scheme,
        _ => None,
    }
}

fn push_trunc(out: &mut String, s: &str, max: Option<usize>) {
    match max {
        Some(n) if s.len() > n => {
            let mut end = n;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&s[..end]);
        }
        _ => out.push_str(s),
    }
}

fn render_op(op: &Op, cx: &LogContext<'_>, out: &mut String) -> bool {
    match op {
        Op::Literal(s) => out.push_str(s),
        Op::StartTime(fmt) => {
            let Some(t) = cx.start_time else { return false };
            format_time(t, fmt.as_deref(), out);
        }
        Op::Req(h, alt, max) => {
            let v = if h.starts_with(':') {
                pseudo(cx, h).or_else(|| {
                    alt.as_deref().and_then(|a| {
                        pseudo(cx, a).or_else(|| header(cx.request_headers, a, &None))
                    })
                })
            } else {
                header(cx.request_headers, h, &None).or_else(|| {
                    alt.as_deref().and_then(|a| {
                        pseudo(cx, a).or_else(|| header(cx.request_headers, a, &None))
                    })
                })
            };
            let Some(v) = v else { return false };
            push_trunc(out, v, *max);
        }
        Op::Resp(h, alt, max) => {
            let Some(v) = header(cx.response_headers, h, alt) else {
                return false;
            };
            push_trunc(out, v, *max);
        }
        Op::Trailer(h, alt, max) => {
            let Some(v) = header(cx.response_trailers, h, alt) else {
                return false;
            };
            push_trunc(out, v, *max);
        }
        Op::Protocol => match cx.protocol {
            Some(p) => out.push_str(p),
            None => return false,
        },
        Op::ResponseCode => {
            let _ = write!(out, "{}", cx.response_code.unwrap_or(0));
        }
        Op::ResponseCodeDetails => match cx.response_code_details {
            Some(d) => out.push_str(d),
            None => return false,
        },
        Op::ResponseFlags => {
            let _ = write!(out, "{}", cx.response_flags);
        }
        Op::BytesReceived => {
            let _ = write!(out, "{}", cx.bytes_received);
        }
        Op::BytesSent => {
            let _ = write!(out, "{}", cx.bytes_sent);
        }
        Op::Duration | Op::RequestDuration | Op::ResponseDuration => {
            let d = match op {
                Op::Duration => cx.duration,
                Op::RequestDuration => cx.request_duration,
                _ => cx.response_duration,
            };
            let Some(d) = d else { return false };
            let _ = write!(out, "{}", d.as_millis());
        }
        Op::Address(which, part) => {
            let a = match which {
                Addr::Remote => cx.downstream_remote_address,
                Addr::DirectRemote => cx.downstream_direct_remote_address,
                Addr::Local => cx.downstream_local_address,
                Addr::Upstream => cx.upstream_host,
                Addr::UpstreamLocal => cx.upstream_local_address,
            };
            let Some(a) = a else { return false };
            let _ = match part {
                AddrPart::Full => write!(out, "{a}"),
                AddrPart::NoPort => write!(out, "{}", a.ip()),
                AddrPart::Port => write!(out, "{}", a.port()),
            };
        }
        Op::UpstreamCluster => match cx.upstream_cluster {
            Some(c) => out.push_str(c),
            None => return false,
        },
        Op::UpstreamTransportFailureReason => match cx.upstream_transport_failure_reason {
            Some(c) => out.push_str(c),
            None => return false,
        },
        Op::RouteName => match cx.route_name {
            Some(r) if !r.is_empty() => out.push_str(r),
            _ => return false,
        },
        Op::ConnectionId => {
            let Some(id) = cx.connection_id else {
                return false;
            };
            let _ = write!(out, "{id}");
        }
        Op::Hostname => out.push_str(hostname()),
        Op::LocalReplyBody => match cx.local_reply_body {
            Some(b) => out.push_str(b),
            None => return false,
        },
        Op::AttemptCount => {
            let Some(n) = cx.upstream_request_attempt_count else {
                return false;
            };
            let _ = write!(out, "{n}");
        }
        Op::FilterState(key, plain, max) => {
            let Some(v) = filter_state(cx, key, *plain) else {
                return false;
            };
            push_trunc(out, &v, *max);
        }
    }
    true
}

fn filter_state(cx: &LogContext<'_>, key: &str, plain: bool) -> Option<String> {
    let (_, o) = cx.filter_state.iter().find(|(n, _)| n == key)?;
    if plain { o.plain() } else { o.json() }
}

fn hostname() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "-".into())
    })
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `%START_TIME%` (UTC, `2024-01-02T03:04:05.678Z` by default) and the strftime
/// subset Envoy configs use, plus Envoy's `%3f`/`%6f`/`%9f`.
fn format_time(t: SystemTime, fmt: Option<&str>, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let nanos = d.subsec_nanos();
    let (y, mo, da) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let Some(fmt) = fmt else {
        let _ = write!(
            out,
            "{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            nanos / 1_000_000
        );
        return;
    };
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y:04}"),
            Some('m') => write!(out, "{mo:02}"),
            Some('d') => write!(out, "{da:02}"),
            Some('H') => write!(out, "{h:02}"),
            Some('M') => write!(out, "{mi:02}"),
            Some('S') => write!(out, "{s:02}"),
            Some('s') => write!(out, "{secs}"),
            Some('z') => write!(out, "+0000"),
            Some('Z') => write!(out, "UTC"),
            Some('F') => write!(out, "{y:04}-{mo:02}-{da:02}"),
            Some('T') => write!(out, "{h:02}:{mi:02}:{s:02}"),
            Some('%') => write!(out, "%"),
            Some(n @ ('1'..='9')) if chars.peek() == Some(&'f') => {
                chars.next();
                let digits = n.to_digit(10).unwrap_or(3) as usize;
                let frac = format!("{nanos:09}");
                write!(out, "{}", &frac[..digits])
            }
            Some('f') => write!(out, "{nanos:09}"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format_renders_dashes_for_missing() {
        let f = Format::default_access_log();
        let cx = LogContext {
            start_time: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            method: Some("GET"),
            path: Some("/a"),
            protocol: Some("HTTP/1.1"),
            response_code: Some(200),
            ..Default::default()
        };
        let s = f.render_string(&cx, "-");
        assert_eq!(
            s,
            "[2023-11-14T22:13:20.123Z] \"GET /a HTTP/1.1\" 200 - 0 0 - - \"-\" \"-\" \"-\" \"-\" \"-\"\n"
        );
    }

    #[test]
    fn header_fallback_and_truncation() {
        let f = Format::parse("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):3%").unwrap();
        let cx = LogContext {
            path: Some("/abcdef"),
            ..Default::default()
        };
        assert_eq!(f.render_string(&cx, "-"), "/ab");
    }

    #[test]
    fn errors_name_the_operator() {
        assert_eq!(
            Format::parse("%NOPE%").unwrap_err(),
            "unsupported command operator %NOPE%"
        );
        assert!(Format::parse("%REQ(a").is_err());
    }

    #[test]
    fn json_values_are_typed() {
        let f = Format::parse("%RESPONSE_CODE%").unwrap();
        let cx = LogContext {
            response_code: Some(404),
            ..Default::default()
        };
        assert_eq!(f.render_json(&cx), serde_json::json!(404));
        let f = Format::parse("%REQ(x-missing)%").unwrap();
        assert_eq!(f.render_json(&cx), serde_json::Value::Null);
    }

    #[test]
    fn strftime_subset() {
        let mut s = String::new();
        format_time(
            UNIX_EPOCH + Duration::from_millis(86_400_000 + 5),
            Some("%Y/%m/%d %3f"),
            &mut s,
        );
        assert_eq!(s, "1970/01/02 005");
    }
}
