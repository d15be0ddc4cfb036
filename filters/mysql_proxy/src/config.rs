//! The filter's configuration: Envoy's `MySQLProxy` and Legate's additions.

use std::time::Duration;

use legate_filter_api::random::Percentage;

use crate::sql::Operation;

/// `envoy.extensions.filters.network.mysql_proxy.v3.MySQLProxy`, with Legate's
/// `legate_denied_query_error`, `legate_query_faults` and `legate_unparsed_queries`.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Stats are rooted at `mysql.<stat_prefix>.`.
    pub stat_prefix: String,
    /// Legate's: the ERR packet that answers a query a later filter denies,
    /// instead of closing the connection as Envoy does.
    pub denied_query_error: Option<ErrorReply>,
    /// Legate's: faults injected into queries; the first entry that matches a
    /// query applies.
    pub faults: Vec<QueryFault>,
    /// Legate's (`legate_unparsed_queries: DENY`): refuse a query the parser
    /// cannot analyse, as a denied one, since no table policy can judge it.
    pub deny_unparsed: bool,
}

/// An ERR packet the filter answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// MySQL error code, e.g. 1142 (`ER_TABLEACCESS_DENIED_ERROR`).
    pub code: u16,
    /// Five-character SQL state, e.g. `42000`.
    pub sql_state: String,
    /// The message the client shows.
    pub message: String,
}

impl ErrorReply {
    /// The default answer to a denied query: 1142, state 42000.
    pub fn denied() -> ErrorReply {
        ErrorReply {
            code: 1142,
            sql_state: "42000".into(),
            message: "Query denied by the proxy's access policy".into(),
        }
    }
}

/// A fault injected into matching queries, shaped as Envoy's HTTP fault filter.
#[derive(Clone, Debug, Default)]
pub struct QueryFault {
    /// Table keys (as in the metadata: `payments`, `shop.payments` or
    /// `payments.shop`); empty matches any query.
    pub tables: Vec<String>,
    /// Operations; empty matches any. With `tables`, the operation must be on
    /// one of those tables.
    pub operations: Vec<Operation>,
    /// Delay before forwarding the query.
    pub delay: Option<(Duration, Percentage)>,
    /// Answer with an ERR packet without forwarding the query.
    pub abort: Option<(ErrorReply, Percentage)>,
}

impl QueryFault {
    /// Whether the fault applies to a query that runs `statements` and touches
    /// `tables`.
    pub fn matches(&self, statements: &[Operation], tables: &[Access]) -> bool {
        let op_ok = |ops: &[Operation]| {
            self.operations.is_empty() || ops.iter().any(|o| self.operations.contains(o))
        };
        if self.tables.is_empty() {
            return op_ok(statements) || tables.iter().any(|t| op_ok(&t.operations));
        }
        tables
            .iter()
            .any(|t| t.keys.iter().any(|k| self.tables.contains(k)) && op_ok(&t.operations))
    }
}

/// A table a query touches, under the names the metadata gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The table as written (`payments`, `shop.payments`), then `<table>.<db>`
    /// when the database is known.
    pub keys: Vec<String>,
    /// What the query does to it.
    pub operations: Vec<Operation>,
}
