//! `envoy.filters.network.mysql_proxy` (`envoy.extensions.filters.network.mysql_proxy.v3.MySQLProxy`)
//! and Legate's `legate_denied_query_error`, `legate_query_faults` and
//! `legate_unparsed_queries`.

use std::sync::Arc;

use legate_filter_api::network::NetworkFilterFactory;
use legate_mysql_proxy::config::{ErrorReply, QueryFault};
use legate_mysql_proxy::sql::Operation;
use legate_mysql_proxy::{Config, MySqlProxyFactory};

use super::parse_fault::fractional_percent;
use super::walk::{Field, Obj};

pub(crate) const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.mysql_proxy.v3.MySQLProxy";

/// The filter, counting under `mysql.<stat_prefix>.`.
pub(crate) fn filter(mut o: Obj<'_>) -> Option<Arc<dyn NetworkFilterFactory>> {
    // Envoy documents `access_log` as not implemented.
    o = o.unsupported(&["access_log"]);
    let stat_prefix = o.req("stat_prefix").and_then(|g| g.non_empty_str());
    if let Some(g) = o.get("downstream_ssl") {
        // Only pass-through: terminating the client's TLS is not supported.
        g.enumeration(&["DISABLE"], &["REQUIRE", "ALLOW"]);
    }
    let denied_query_error = o
        .get("legate_denied_query_error")
        .and_then(|g| error_reply(&g, ErrorReply::denied()));
    let deny_unparsed = o
        .get("legate_unparsed_queries")
        .and_then(|g| g.enumeration(&["ALLOW", "DENY"], &[]))
        == Some("DENY");
    let faults = o
        .get("legate_query_faults")
        .map(|g| g.seq().iter().filter_map(fault).collect())
        .unwrap_or_default();
    o.finish();
    let config = Config {
        stat_prefix: stat_prefix?,
        denied_query_error,
        faults,
        deny_unparsed,
    };
    Some(Arc::new(MySqlProxyFactory::new(
        config,
        crate::stats::store(),
    )))
}

/// An ERR packet's `error_code`, `sql_state` and `message`, each defaulting to
/// `default`'s; `percentage` is read by the caller when it is a fault.
fn error_fields(o: &mut Obj<'_>, default: ErrorReply) -> Option<ErrorReply> {
    let mut reply = default;
    if let Some(g) = o.get("error_code") {
        match g.int::<u16>("an error code from 1 to 65535") {
            Some(0) => g.error("error_code must be from 1 to 65535"),
            Some(c) => reply.code = c,
            None => return None,
        }
    }
    if let Some(g) = o.get("sql_state") {
        let s = g.str()?;
        if s.len() != 5 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            g.error(format!(
                "sql_state must be five letters or digits, such as \"42000\"; found \"{s}\""
            ));
            return None;
        }
        reply.sql_state = s;
    }
    if let Some(g) = o.get("message") {
        reply.message = g.str()?;
    }
    Some(reply)
}

fn error_reply(f: &Field<'_>, default: ErrorReply) -> Option<ErrorReply> {
    let mut o = f.obj()?;
    let reply = error_fields(&mut o, default);
    o.finish();
    reply
}

fn fault(f: &Field<'_>) -> Option<QueryFault> {
    let mut o = f.obj()?;
    let tables = o.get("tables").map(|g| g.strings()).unwrap_or_default();
    let operations = o
        .get("operations")
        .map(|g| g.seq().iter().filter_map(operation).collect())
        .unwrap_or_default();
    let delay = o.get("delay").and_then(|g| {
        let mut d = g.obj()?.unsupported(&["header_delay"]);
        let fixed = d.req("fixed_delay").and_then(|g| g.duration());
        let pct = fractional_percent(&mut d);
        d.finish();
        Some((fixed?, pct))
    });
    let abort = o.get("abort").and_then(|g| {
        let mut a = g
            .obj()?
            .unsupported(&["http_status", "grpc_status", "header_abort"]);
        let reply = error_fields(
            &mut a,
            ErrorReply {
                code: 1105,
                sql_state: "HY000".into(),
                message: "Fault injected by the proxy".into(),
            },
        );
        let pct = fractional_percent(&mut a);
        a.finish();
        Some((reply?, pct))
    });
    if delay.is_none() && abort.is_none() && !o.has("delay") && !o.has("abort") {
        o.error("a query fault needs \"delay\", \"abort\" or both");
    }
    o.finish();
    Some(QueryFault {
        tables,
        operations,
        delay,
        abort,
    })
}

fn operation(f: &Field<'_>) -> Option<Operation> {
    let name = f.str()?;
    let found = Operation::ALL.iter().find(|o| o.as_str() == name).copied();
    if found.is_none() {
        let all: Vec<&str> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        f.error(format!(
            "unknown operation \"{name}\" (expected one of: {})",
            all.join(", ")
        ));
    }
    found
}
