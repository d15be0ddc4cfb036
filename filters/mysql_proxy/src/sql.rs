//! SQL analysis of a `COM_QUERY` text, as Envoy's mysql_proxy does it with its
//! SQL parser: each statement's operation, and every table the text touches with
//! the operations performed on it. The filter turns this into dynamic metadata
//! (table name to operations, as Envoy emits it), per-operation stats, and RBAC
//! and fault matching. Pure: text in, [`QueryInfo`] out.
//!
//! Parsed with `sqlparser`'s MySQL dialect. Which operations a table gets:
//!
//! - every table read, in any query, subquery, derived table, `UNION` or
//!   `EXISTS`, gets [`Operation::Select`]; names a `WITH` clause defines (CTEs)
//!   and aliases are not tables;
//! - the tables a statement writes get its own operation: the `INSERT` target,
//!   every table in an `UPDATE`'s table list (MySQL may change any of them, and
//!   listing too much is the safe side for access control), the targets of a
//!   `DELETE` (a multi-table `DELETE`'s other tables only `select`), what a
//!   `CREATE`, `DROP` or `ALTER` names; `RENAME TABLE` is `alter` on both names;
//! - where a statement also does something else to its target's rows, that is
//!   listed too: `REPLACE` is `insert` and `delete` (it deletes the rows it
//!   replaces), `INSERT ... ON DUPLICATE KEY UPDATE` is `insert` and `update`;
//! - `TRUNCATE` is `delete`: it removes every row, which is what a policy on
//!   `delete` means to stop (MySQL checks the `DROP` privilege for it, as it drops
//!   and re-creates the table, but the table stays);
//! - `CREATE INDEX ... ON t` is `create` on `t` and `DROP INDEX ... ON t` is
//!   `drop` on `t`, as Envoy reports a `CREATE INDEX`, though MySQL runs both as
//!   an `ALTER TABLE`;
//! - `SHOW ...` and `DESCRIBE t` (MySQL's `SHOW COLUMNS`) are
//!   [`Operation::Show`] and list no table, as in Envoy;
//! - any other statement is [`Operation::Other`]: a table it names directly
//!   (`LOCK TABLES t`, `ANALYZE TABLE t`) gets `other`, a query inside it
//!   `select`; a statement nested in another (`EXPLAIN DELETE ...`, a trigger
//!   body) lists its tables by its own rules, as MySQL checks the nested
//!   statement's privileges.
//!
//! Names are kept as written, unquoted, case included (MySQL table names are
//! case-sensitive on Linux); `shop.payments` and `payments` are different tables
//! here, as the current database is not known to the parser.
//!
//! An empty text, or one of only whitespace, comments and `;`, is `Ok` with no
//! statement: nothing is accessed (the server answers it with an error itself).
//!
//! Never panics, and needs at most about 1 MiB of stack whatever the text (a
//! tokio worker has 2 MiB): the parser stops at [`MAX_NESTING`] nested
//! expressions or subqueries, and text whose operator chains could build a tree
//! deeper than [`MAX_DEPTH_ESTIMATE`] (`1+1+1+...`, a long `OR` chain) is
//! refused before parsing, since the parser builds such chains without
//! recursing but walking or dropping the tree recurses. Both are errors.
//!
//! MySQL syntax the parser does not know is a parse error (measured on
//! `sqlparser` 0.63): the comma form of a multi-table update
//! (`UPDATE t1, t2 SET ...`; `UPDATE t1 JOIN t2 ...` parses), `DELETE t1.* FROM`,
//! `LOCK IN SHARE MODE` (`FOR SHARE` parses), `LOCK TABLES db.t`,
//! `LOAD DATA INFILE`, `PREPARE s FROM '...'`, `CHECK TABLE`, `OPTIMIZE TABLE`,
//! `TABLE t`, and routine or trigger bodies (`CREATE PROCEDURE ... BEGIN ...`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterTableOperation, CreateTableLikeKind, Ident, ObjectName, ObjectType, OnInsert, Query,
    RenameTableNameKind, Statement, TableFactor, TableWithJoins, UpdateTableFromKind, Use, Visit,
    Visitor,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// The parser's limit on nesting: each nested expression, function argument,
/// subquery (which takes two), derived table or compound statement takes one.
/// Deeper text is an error rather than a stack overflow. `sqlparser` is built
/// without its `recursive-protection` feature (which moves deep recursion onto
/// heap-allocated stack segments), so the parser recurses on the caller's stack:
/// at this limit the costliest nestings measured take about 0.85 MiB of stack,
/// in release and debug builds alike, well within a tokio worker's 2 MiB
/// (sqlparser's own default, 50, could take about 1.4 MiB).
pub const MAX_NESTING: usize = 32;

/// The most tree depth the text may imply before parsing is refused: per open
/// bracket, the tokens since the last comma at that level (plus the set
/// operators, whose chains span commas), summed over the open brackets. Walking
/// and dropping a tree that deep takes about 0.75 MiB of stack in a debug build
/// and under 0.1 MiB in release. 2,000 allows, e.g., an `a = 1 OR a = 2 ...`
/// chain of 500 terms, or 1,000 `OR (...)` groups.
pub const MAX_DEPTH_ESTIMATE: usize = 2_000;

/// An operation a statement performs on a table, by Envoy's names: the values of
/// the dynamic metadata and the keys of per-operation stats and RBAC rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `SELECT`, and any table a statement only reads.
    Select,
    /// `INSERT`, `REPLACE`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`, `TRUNCATE`.
    Delete,
    /// `CREATE ...`.
    Create,
    /// `DROP ...`.
    Drop,
    /// `ALTER ...`, `RENAME TABLE`.
    Alter,
    /// `SHOW ...`, `DESCRIBE`.
    Show,
    /// Anything else: `SET`, `BEGIN`, `COMMIT`, `USE`, `LOCK TABLES`, ...
    Other,
}

impl Operation {
    /// Every operation, in declaration order (so `op as usize` indexes it).
    pub const ALL: [Operation; 9] = [
        Operation::Select,
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Create,
        Operation::Drop,
        Operation::Alter,
        Operation::Show,
        Operation::Other,
    ];

    /// The name Envoy uses in its metadata (`"select"`, ...); `"other"` for the rest.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Select => "select",
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Create => "create",
            Operation::Drop => "drop",
            Operation::Alter => "alter",
            Operation::Show => "show",
            Operation::Other => "other",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One table a query touches, with what is done to it: one entry of Envoy's
/// metadata, and what RBAC and fault rules on tables match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableAccess {
    /// As written in the SQL, unquoted: `"payments"` or `"shop.payments"`.
    pub name: String,
    /// The database named in the SQL, if any (`"shop"`).
    pub database: Option<String>,
    /// The table alone (`"payments"`).
    pub table: String,
    /// Operations on it, in first-seen order, no duplicates.
    pub operations: Vec<Operation>,
}

/// What a query text does: the result of [`parse`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryInfo {
    /// Each statement's own operation, in order (`SELECT` is `Select`, `INSERT`
    /// and `REPLACE` are `Insert`, `SET`, `BEGIN`, `COMMIT`, `USE`... are `Other`).
    pub statements: Vec<Operation>,
    /// Tables in first-seen order across all statements (`SHOW` lists none, as
    /// in Envoy).
    pub tables: Vec<TableAccess>,
    /// The database a `USE db` statement switches to (the last one wins), so the
    /// filter can follow the connection's current database.
    pub use_database: Option<String>,
}

impl QueryInfo {
    /// The entry for a table, by its name as written (`"shop.payments"`).
    pub fn table(&self, name: &str) -> Option<&TableAccess> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// Why a text could not be analysed: the tokenizer's or parser's message, or
/// that the text nests too deeply. Envoy counts these as `queries_parse_error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    message: String,
}

impl SqlError {
    fn new(message: impl Into<String>) -> Self {
        SqlError {
            message: message.into(),
        }
    }

    /// The message, as shown by `Display`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// Analyses one `COM_QUERY` text (one or more statements).
pub fn parse(sql: &str) -> Result<QueryInfo, SqlError> {
    // MariaDB runs the text of `/*M! ... */` comments, as MySQL (and the parser)
    // does that of `/*! ... */`.
    let sql = if sql.contains("/*M!") {
        std::borrow::Cow::Owned(sql.replace("/*M!", " /*!"))
    } else {
        std::borrow::Cow::Borrowed(sql)
    };
    let sql = sql.as_ref();
    let dialect = MySqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::new(e.to_string()))?;
    check_depth(&tokens)?;
    let statements = Parser::new(&dialect)
        .with_recursion_limit(MAX_NESTING)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| SqlError::new(e.to_string()))?;
    let mut analyzer = Analyzer::default();
    for statement in &statements {
        let ControlFlow::Continue(()) = statement.visit(&mut analyzer);
    }
    Ok(analyzer.info)
}

/// Appends `sql` to `out` with each number and single-quoted string replaced by a
/// marker, so that queries differing only in literal values, whose [`parse`]
/// results are the same, share one key: a cache of analyses skips the parser for
/// them. Everything else is kept byte for byte (identifiers, quoted identifiers,
/// double-quoted text, comments); a digit run inside a word (`t1`, `1abc`) is a
/// name, not a number. The markers start with `0xFF`, which UTF-8 text never
/// holds, so distinct texts that are not literal-for-literal alike never share a
/// key. False when a quote or comment is not closed, or a number runs into a
/// word: such text is left to the parser.
///
/// ```
/// use legate_mysql_proxy::sql::shape;
/// let (mut a, mut b) = (Vec::new(), Vec::new());
/// assert!(shape("SELECT c FROM t1 WHERE id=5 AND s='x''y'", &mut a));
/// assert!(shape("SELECT c FROM t1 WHERE id=70 AND s='z'", &mut b));
/// assert_eq!(a, b);
/// b.clear();
/// assert!(shape("SELECT c FROM t1 WHERE id=? AND s='z'", &mut b));
/// assert_ne!(a, b);
/// ```
pub fn shape(sql: &str, out: &mut Vec<u8>) -> bool {
    let b = sql.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b'\'' | b'"' | b'`' => {
                // Backslash escapes apply in strings, not in `names`; a doubled
                // quote is the quote itself in both.
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return false,
                        Some(b'\\') if c != b'`' => j += 2,
                        Some(&q) if q == c && b.get(j + 1) == Some(&c) => j += 2,
                        Some(&q) if q == c => break,
                        Some(_) => j += 1,
                    }
                }
                i = j + 1;
                if c == b'\'' {
                    out.extend_from_slice(&[0xFF, b's']);
                    continue;
                }
            }
            b'#' => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n)
            }
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2).is_some_and(|c| c.is_ascii_whitespace()) =>
            {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match sql[i + 2..].find("*/") {
                Some(n) => i += n + 4,
                None => return false,
            },
            _ if word(c) => {
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                let w = &b[start..i];
                if w.iter().all(u8::is_ascii_digit) {
                    // A number, with its fraction.
                    if b.get(i) == Some(&b'.') {
                        i += 1;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                        if i < b.len() && word(b[i]) {
                            return false;
                        }
                    }
                    out.extend_from_slice(&[0xFF, b'n']);
                    continue;
                }
            }
            _ => i += 1,
        }
        out.extend_from_slice(&b[start..i]);
    }
    true
}

/// Refuses text whose parse tree could be deeper than [`MAX_DEPTH_ESTIMATE`].
///
/// The parser builds an operator chain (`a OR b OR c ...`, `x IS NULL IS NULL`,
/// `SELECT .. UNION SELECT ..`) in a loop, as a left-deep tree, so its own
/// recursion limit does not bound the tree; the visitor and the tree's drop then
/// recurse once per link. A chain lies within one comma-separated item at one
/// bracket level (set operators excepted, so those are counted apart), and
/// brackets nest, so the sum over open brackets of the tokens since the last
/// comma bounds the depth. Long lists (`IN (1, 2, ...)`, multi-row `VALUES`)
/// stay cheap: each item starts the count anew.
fn check_depth(tokens: &[TokenWithSpan]) -> Result<(), SqlError> {
    struct Level {
        items: usize,
        set_ops: usize,
    }
    let mut levels = vec![Level {
        items: 0,
        set_ops: 0,
    }];
    // The sum of `1 + items + set_ops` over `levels`.
    let mut total = 1usize;
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) => continue,
            Token::Comma => {
                if let Some(level) = levels.last_mut() {
                    total -= level.items;
                    level.items = 0;
                }
                continue;
            }
            // A statement ends: no chain goes on past it. Brackets stay open, as a
            // compound statement's body is not bracketed; any deeper nesting it
            // starts is still counted, on top.
            Token::SemiColon => {
                if let Some(level) = levels.last_mut() {
                    total -= level.items + level.set_ops;
                    level.items = 0;
                    level.set_ops = 0;
                }
                continue;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if levels.len() > 1 {
                    let level = levels.pop().expect("more than one level");
                    total -= 1 + level.items + level.set_ops;
                }
                continue;
            }
            _ => {}
        }
        let level = levels
            .last_mut()
            .expect("the outermost level is never popped");
        if is_set_operator(&t.token) {
            level.set_ops += 1;
        } else {
            level.items += 1;
        }
        total += 1;
        if matches!(t.token, Token::LParen | Token::LBracket | Token::LBrace) {
            levels.push(Level {
                items: 0,
                set_ops: 0,
            });
            total += 1;
        }
        if total > MAX_DEPTH_ESTIMATE {
            return Err(SqlError::new(format!(
                "query nests too deeply to analyse (at Line: {}, Column: {})",
                t.span.start.line, t.span.start.column
            )));
        }
    }
    Ok(())
}

fn is_set_operator(token: &Token) -> bool {
    use sqlparser::keywords::Keyword;
    matches!(
        token,
        Token::Word(w) if matches!(
            w.keyword,
            Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::MINUS
        )
    )
}

/// The rules for one statement's tables, kept while the visitor is inside it.
struct Frame {
    /// Operations for a table named outside any query (the statement's targets).
    direct: Vec<Operation>,
    /// Per table-name node: its operation instead, or `None` to skip it (the
    /// target list of a multi-table `DELETE`, which names tables listed again).
    overrides: HashMap<*const ObjectName, Option<Operation>>,
    /// Queries the visitor is inside, within this statement.
    query_depth: usize,
    /// `SHOW`: no table is listed, as in Envoy.
    silent: bool,
}

impl Frame {
    fn new(direct: Vec<Operation>) -> Self {
        Frame {
            direct,
            overrides: HashMap::new(),
            query_depth: 0,
            silent: false,
        }
    }
}

/// The CTE names of one `WITH` clause and which of them are in scope.
struct CteScope {
    /// The query the `WITH` belongs to.
    query: *const Query,
    names: Vec<String>,
    /// Each CTE's own query, to tell when the visitor is inside one.
    bodies: Vec<*const Query>,
    recursive: bool,
    /// How many of `names` are in scope: inside the i-th CTE only the earlier
    /// ones (and itself, if `RECURSIVE`), elsewhere all.
    visible: usize,
}

#[derive(Default)]
struct Analyzer {
    info: QueryInfo,
    /// Index of each table in `info.tables`, by name.
    index: HashMap<String, usize>,
    frames: Vec<Frame>,
    scopes: Vec<CteScope>,
}

impl Analyzer {
    fn add(&mut self, name: &ObjectName, op: Operation) {
        self.add_parts(name_parts(name), op);
    }

    fn add_ident(&mut self, ident: &Ident, op: Operation) {
        self.add_parts(vec![ident.value.clone()], op);
    }

    fn add_parts(&mut self, mut parts: Vec<String>, op: Operation) {
        let Some(table) = parts.pop() else {
            return;
        };
        let database = parts.pop();
        let name = match &database {
            Some(db) => {
                let mut prefix = parts.join(".");
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                format!("{prefix}{db}.{table}")
            }
            None => table.clone(),
        };
        let i = match self.index.get(&name) {
            Some(&i) => i,
            None => {
                let i = self.info.tables.len();
                self.index.insert(name.clone(), i);
                self.info.tables.push(TableAccess {
                    name,
                    database,
                    table,
                    operations: Vec::new(),
                });
                i
            }
        };
        let ops = &mut self.info.tables[i].operations;
        if !ops.contains(&op) {
            ops.push(op);
        }
    }

    fn silent(&self) -> bool {
        self.frames.iter().any(|f| f.silent)
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        let [part] = name.0.as_slice() else {
            return false;
        };
        let Some(ident) = part.as_ident() else {
            return false;
        };
        self.scopes
            .iter()
            .any(|s| s.names[..s.visible].contains(&ident.value))
    }

    /// Works out a statement's operation and the rules for its tables; adds the
    /// tables the visitor will not reach (`DROP`'s names, `LIKE`'s source, ...).
    fn enter(&mut self, statement: &Statement) -> (Operation, Frame) {
        use Operation::*;
        let op = statement_operation(statement);
        let mut frame = Frame::new(vec![op]);
        match statement {
            Statement::Query(_) => {}
            Statement::Insert(insert) => {
                if insert.replace_into {
                    frame.direct.push(Delete);
                }
                if matches!(insert.on, Some(OnInsert::DuplicateKeyUpdate(_))) {
                    frame.direct.push(Update);
                }
            }
            Statement::Update(update) => {
                if let Some(
                    UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from),
                ) = &update.from
                {
                    for_each_table(from, &mut |name, _| {
                        frame.overrides.insert(name, Some(Select));
                    });
                }
            }
            Statement::Delete(delete) => {
                let from = match &delete.from {
                    sqlparser::ast::FromTable::WithFromKeyword(from)
                    | sqlparser::ast::FromTable::WithoutKeyword(from) => from,
                };
                // `DELETE a, b FROM t1 a JOIN t2 b`: targets named, tables in FROM.
                // `DELETE FROM a, b USING t1 a JOIN t2 b`: targets in FROM, tables
                // in USING. `DELETE FROM t`: every table in FROM is the target.
                let (targets, tables): (Vec<&ObjectName>, &[TableWithJoins]) = match &delete.using {
                    Some(using) => {
                        let mut targets = Vec::new();
                        for_each_table(from, &mut |name, _| {
                            targets.push(name);
                            frame.overrides.insert(name, None);
                        });
                        (targets, using)
                    }
                    None if !delete.tables.is_empty() => (delete.tables.iter().collect(), from),
                    None => (Vec::new(), from),
                };
                if !targets.is_empty() {
                    frame.direct = vec![Select];
                    let mut resolved = vec![false; targets.len()];
                    for_each_table(tables, &mut |name, alias| {
                        for (i, target) in targets.iter().enumerate() {
                            if names_target(name, alias, target) {
                                resolved[i] = true;
                                frame.overrides.insert(name, Some(Delete));
                            }
                        }
                    });
                    // A target that names no table in the list: MySQL refuses the
                    // statement, but list it as written rather than lose it.
                    for (target, resolved) in targets.iter().zip(resolved) {
                        if !resolved {
                            self.add(target, Delete);
                        }
                    }
                }
            }
            Statement::CreateTable(create) => {
                self.add(&create.name, Create);
                if let Some(
                    CreateTableLikeKind::Plain(like) | CreateTableLikeKind::Parenthesized(like),
                ) = &create.like
                {
                    self.add(&like.name, Select);
                }
                if let Some(clone) = &create.clone {
                    self.add(clone, Select);
                }
            }
            Statement::AlterTable(alter) => {
                self.add(&alter.name, Alter);
                for operation in &alter.operations {
                    if let AlterTableOperation::RenameTable {
                        table_name: RenameTableNameKind::As(to) | RenameTableNameKind::To(to),
                    } = operation
                    {
                        self.add(to, Alter);
                    }
                }
            }
            Statement::RenameTable(renames) => {
                for rename in renames {
                    self.add(&rename.old_name, Alter);
                    self.add(&rename.new_name, Alter);
                }
            }
            Statement::Drop {
                object_type,
                names,
                table,
                ..
            } => match object_type {
                ObjectType::Table | ObjectType::View | ObjectType::MaterializedView => {
                    for name in names {
                        self.add(name, Drop);
                    }
                }
                ObjectType::Index => {
                    if let Some(table) = table {
                        self.add(table, Drop);
                    }
                }
                _ => {}
            },
            Statement::LockTables { tables } => {
                for lock in tables {
                    self.add_ident(&lock.table, Other);
                }
            }
            Statement::OptimizeTable { name, .. } => self.add(name, Other),
            Statement::LoadData { table_name, .. } => self.add(table_name, Insert),
            Statement::Use(
                Use::Object(name) | Use::Database(name) | Use::Schema(name) | Use::Catalog(name),
            ) if self.frames.is_empty() => {
                self.info.use_database = Some(name_parts(name).join("."));
            }
            _ => {}
        }
        if op == Show {
            frame.silent = true;
        }
        (op, frame)
    }
}

/// A statement's own operation, by its leading verb.
fn statement_operation(statement: &Statement) -> Operation {
    use Operation::*;
    use Statement as S;
    match statement {
        S::Query(_) => Select,
        S::Insert(_) | S::LoadData { .. } => Insert,
        S::Update(_) => Update,
        S::Delete(_) | S::Truncate(_) => Delete,
        S::CreateView { .. }
        | S::CreateTable { .. }
        | S::CreateVirtualTable { .. }
        | S::CreateIndex { .. }
        | S::CreateRole { .. }
        | S::CreateSecret { .. }
        | S::CreateServer { .. }
        | S::CreatePolicy { .. }
        | S::CreateConnector { .. }
        | S::CreateOperator { .. }
        | S::CreateOperatorFamily { .. }
        | S::CreateOperatorClass { .. }
        | S::CreateTextSearch { .. }
        | S::CreateExtension { .. }
        | S::CreateCollation { .. }
        | S::CreateSchema { .. }
        | S::CreateDatabase { .. }
        | S::CreateFunction { .. }
        | S::CreateTrigger { .. }
        | S::CreateProcedure { .. }
        | S::CreateMacro { .. }
        | S::CreateStage { .. }
        | S::CreateFileFormat { .. }
        | S::CreateWarehouse { .. }
        | S::CreateSequence { .. }
        | S::CreateDomain { .. }
        | S::CreateType { .. }
        | S::CreateUser { .. } => Create,
        S::AlterTable { .. }
        | S::AlterSchema { .. }
        | S::AlterIndex { .. }
        | S::AlterView { .. }
        | S::AlterFunction { .. }
        | S::AlterType { .. }
        | S::AlterCollation { .. }
        | S::AlterOperator { .. }
        | S::AlterOperatorFamily { .. }
        | S::AlterOperatorClass { .. }
        | S::AlterTextSearch { .. }
        | S::AlterRole { .. }
        | S::AlterPolicy { .. }
        | S::AlterConnector { .. }
        | S::AlterSession { .. }
        | S::AlterUser { .. }
        | S::RenameTable { .. } => Alter,
        S::Drop { .. }
        | S::DropFunction { .. }
        | S::DropDomain { .. }
        | S::DropProcedure { .. }
        | S::DropSecret { .. }
        | S::DropPolicy { .. }
        | S::DropConnector { .. }
        | S::DropExtension { .. }
        | S::DropOperator { .. }
        | S::DropOperatorFamily { .. }
        | S::DropOperatorClass { .. }
        | S::DropTrigger { .. } => Drop,
        S::ShowFunctions { .. }
        | S::ShowVariable { .. }
        | S::ShowStatus { .. }
        | S::ShowVariables { .. }
        | S::ShowCreate { .. }
        | S::ShowColumns { .. }
        | S::ShowCatalogs { .. }
        | S::ShowDatabases { .. }
        | S::ShowProcessList { .. }
        | S::ShowSchemas { .. }
        | S::ShowCharset { .. }
        | S::ShowObjects { .. }
        | S::ShowTables { .. }
        | S::ShowViews { .. }
        | S::ShowCollation { .. }
        | S::ExplainTable { .. } => Show,
        _ => Other,
    }
}

/// Calls `f` with the name and alias of each plain table in a `FROM`-like list,
/// through joins and parenthesised joins (not into derived tables).
fn for_each_table<'a>(
    list: &'a [TableWithJoins],
    f: &mut dyn FnMut(&'a ObjectName, Option<&'a Ident>),
) {
    for t in list {
        for_each_in_factor(&t.relation, f);
        for join in &t.joins {
            for_each_in_factor(&join.relation, f);
        }
    }
}

fn for_each_in_factor<'a>(
    factor: &'a TableFactor,
    f: &mut dyn FnMut(&'a ObjectName, Option<&'a Ident>),
) {
    match factor {
        TableFactor::Table { name, alias, .. } => f(name, alias.as_ref().map(|a| &a.name)),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => for_each_table(std::slice::from_ref(&**table_with_joins), f),
        _ => {}
    }
}

/// Whether a multi-table `DELETE` target (`a`, `t1`, `db.t1`) names this table:
/// by its alias if it has one, else by its name (the table part alone matches
/// `db.t1`, as MySQL resolves it against the tables listed).
fn names_target(name: &ObjectName, alias: Option<&Ident>, target: &ObjectName) -> bool {
    let target = name_parts(target);
    if let Some(alias) = alias {
        return target.len() == 1 && target[0] == alias.value;
    }
    let name = name_parts(name);
    target == name || (target.len() == 1 && name.last() == target.last())
}

/// A name's parts, unquoted.
fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => ident.value.clone(),
            // Not MySQL: a dialect's function producing a name (`IDENTIFIER(..)`).
            None => part.to_string(),
        })
        .collect()
}

impl Visitor for Analyzer {
    type Break = Infallible;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Infallible> {
        let (op, frame) = self.enter(statement);
        if self.frames.is_empty() {
            self.info.statements.push(op);
        }
        self.frames.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<Infallible> {
        self.frames.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Infallible> {
        let ptr: *const Query = query;
        if let Some(scope) = self.scopes.last_mut()
            && let Some(i) = scope.bodies.iter().position(|b| std::ptr::eq(*b, ptr))
        {
            scope.visible = if scope.recursive { i + 1 } else { i };
        }
        if let Some(frame) = self.frames.last_mut() {
            frame.query_depth += 1;
        }
        if let Some(with) = &query.with {
            self.scopes.push(CteScope {
                query: ptr,
                names: with
                    .cte_tables
                    .iter()
                    .map(|c| c.alias.name.value.clone())
                    .collect(),
                bodies: with
                    .cte_tables
                    .iter()
                    .map(|c| &*c.query as *const Query)
                    .collect(),
                recursive: with.recursive,
                visible: 0,
            });
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<Infallible> {
        let ptr: *const Query = query;
        if self
            .scopes
            .last()
            .is_some_and(|s| std::ptr::eq(s.query, ptr))
        {
            self.scopes.pop();
        }
        if let Some(frame) = self.frames.last_mut() {
            frame.query_depth = frame.query_depth.saturating_sub(1);
        }
        if let Some(scope) = self.scopes.last_mut()
            && scope.bodies.iter().any(|b| std::ptr::eq(*b, ptr))
        {
            scope.visible = scope.names.len();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Infallible> {
        if self.silent() {
            return ControlFlow::Continue(());
        }
        let Some(frame) = self.frames.last() else {
            return ControlFlow::Continue(());
        };
        let ptr: *const ObjectName = relation;
        if let Some(rule) = frame.overrides.get(&ptr) {
            if let Some(op) = *rule {
                self.add(relation, op);
            }
            return ControlFlow::Continue(());
        }
        if self.is_cte(relation) {
            return ControlFlow::Continue(());
        }
        if frame.query_depth == 0 {
            // At most three operations (`REPLACE ... ON DUPLICATE KEY UPDATE`).
            let mut ops = [Operation::Other; 3];
            let n = frame.direct.len().min(ops.len());
            ops[..n].copy_from_slice(&frame.direct[..n]);
            for &op in &ops[..n] {
                self.add(relation, op);
            }
        } else {
            self.add(relation, Operation::Select);
        }
        ControlFlow::Continue(())
    }
}
