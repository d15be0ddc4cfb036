//! SQL analysis properties, checked with proptest (the fixed cases are in
//! sql.rs): any text, random token soup or mutated query parses or fails without
//! a panic or a stack overflow, and generated queries list exactly their tables.

use legate_mysql_proxy::sql::{self, Operation};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

/// Valid queries to mutate, covering each kind of statement.
const CORPUS: &[&str] = &[
    "SELECT c FROM sbtest1 WHERE id=5021",
    "SELECT DISTINCT c FROM sbtest3 WHERE id BETWEEN 4820 AND 4919 ORDER BY c",
    "SELECT a, (SELECT max(x) FROM u) FROM t1 JOIN t2 ON t1.id = t2.id LEFT JOIN (SELECT * FROM t3) d ON 1 WHERE x IN (SELECT y FROM t4) AND EXISTS (SELECT 1 FROM t5) GROUP BY a HAVING max(a) > 1",
    "WITH RECURSIVE r (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5), s AS (SELECT * FROM r) SELECT * FROM s, `shop`.`t`",
    "SELECT 1 FROM a UNION SELECT 2 FROM b UNION ALL (SELECT 3 FROM c) ORDER BY 1 LIMIT 10",
    "INSERT INTO t (a, b) VALUES (1, 'x'), (2, \"y\") ON DUPLICATE KEY UPDATE a = VALUES(a)",
    "REPLACE INTO shop.t SELECT * FROM u WHERE u.a IN (SELECT b FROM v)",
    "UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = t2.b WHERE t2.c IN (SELECT c FROM t3)",
    "DELETE a, b FROM t1 AS a JOIN t2 AS b ON a.id = b.id WHERE a.x = 1",
    "DELETE FROM t1, t2 USING t1 JOIN t2 JOIN t3 WHERE t3.x = 1",
    "CREATE TABLE t (id INT PRIMARY KEY, p VARCHAR(10) NOT NULL DEFAULT 'x', FOREIGN KEY (p) REFERENCES parent(id))",
    "CREATE TABLE t AS SELECT * FROM u; DROP TABLE a, b; ALTER TABLE t ADD COLUMN c INT",
    "RENAME TABLE a TO b; TRUNCATE TABLE t; CREATE INDEX i ON t (a); DROP INDEX i ON t",
    "SHOW FULL TABLES FROM shop LIKE 'p%'; DESCRIBE t; SET NAMES utf8mb4; USE shop; BEGIN; COMMIT",
    "SELECT CASE WHEN a > 1 THEN 'x' ELSE NULL END, CAST(b AS SIGNED), c->>'$.k', -d FROM t WHERE e LIKE 'x%' AND f IS NOT NULL",
    "EXPLAIN DELETE FROM t WHERE id = 1; LOCK TABLES t READ; SET @x = (SELECT max(id) FROM t)",
];

/// Tokens for soup: keywords, punctuation, names, literals, comments.
const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "REPLACE",
    "CREATE",
    "TABLE",
    "DROP",
    "ALTER",
    "RENAME",
    "TO",
    "SHOW",
    "USE",
    "WITH",
    "RECURSIVE",
    "AS",
    "JOIN",
    "LEFT",
    "ON",
    "USING",
    "UNION",
    "ALL",
    "EXISTS",
    "IN",
    "NOT",
    "AND",
    "OR",
    "IS",
    "NULL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "GROUP",
    "BY",
    "HAVING",
    "ORDER",
    "LIMIT",
    "DUPLICATE",
    "KEY",
    "TRUNCATE",
    "INDEX",
    "EXPLAIN",
    "BEGIN",
    "COMMIT",
    "IF",
    "LOCK",
    "TABLES",
    "READ",
    "t",
    "u",
    "shop",
    "x",
    "`q t`",
    "`a``b`",
    "1",
    "-2",
    "3.5e3",
    "'s'",
    "\"d\"",
    "X'0A'",
    "@v",
    "@@version",
    "?",
    "(",
    ")",
    ",",
    ";",
    ".",
    "*",
    "+",
    "-",
    "=",
    "<>",
    "->>",
    "::",
    "[",
    "]",
    "{",
    "}",
    "/* c */",
    "-- c\n",
    "# c\n",
    " ",
    "\n",
];

/// Runs `f` on a thread with a 1.25 MiB stack, the budget the module keeps to.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(1280 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// One edit of a query's bytes (on char boundaries).
#[derive(Clone, Debug)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..12).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(at, t)| Edit::Insert {
            at,
            text: t.to_string()
        }),
        (any::<usize>(), "\\PC{1,3}").prop_map(|(at, text)| Edit::Insert { at, text }),
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(sql: &mut String, edit: &Edit) {
    match edit {
        Edit::Delete { at, len } => {
            let start = boundary(sql, *at);
            let end = boundary(sql, start + len);
            if end > start {
                sql.replace_range(start..end, "");
            }
        }
        Edit::Insert { at, text } => {
            let at = boundary(sql, *at);
            sql.insert_str(at, text);
        }
        Edit::Duplicate { at, len } => {
            let start = boundary(sql, *at);
            let end = boundary(sql, start + len).max(start);
            let piece = sql[start..end].to_string();
            sql.insert_str(end, &piece);
        }
        Edit::Truncate { at } => {
            let at = boundary(sql, *at);
            sql.truncate(at);
        }
    }
}

/// A plain table name that is no keyword.
fn table_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,6}".prop_map(|s| format!("tb_{s}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_never_panics(sql in "\\PC{0,200}") {
        let _ = sql::parse(&sql);
    }

    #[test]
    fn any_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = sql::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..80)) {
        let _ = sql::parse(&tokens.join(" "));
    }

    #[test]
    fn mutated_queries_never_panic(
        base in prop::sample::select(CORPUS),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut sql = base.to_string();
        for e in &edits {
            apply(&mut sql, e);
        }
        let _ = sql::parse(&sql);
    }

    #[test]
    fn random_nesting_fits_a_small_stack(
        levels in prop::collection::vec(0usize..8, 0..60),
        chain in 0usize..400,
    ) {
        // Each level wraps the inner expression in one of these.
        const WRAPS: [(&str, &str); 8] = [
            ("(SELECT * FROM (SELECT ", " FROM t) d)"),
            ("(", ")"),
            ("abs(", ")"),
            ("sum(", ") OVER ()"),
            ("EXISTS (SELECT 1 WHERE ", ")"),
            ("(SELECT 1 UNION SELECT ", ")"),
            ("CASE WHEN 1 THEN ", " END"),
            ("NOT ", ""),
        ];
        let mut expr = format!("1{}", "+1".repeat(chain));
        for &i in &levels {
            let (open, close) = WRAPS[i];
            expr = format!("{open}{expr}{close}");
        }
        let sql = format!("SELECT {expr} FROM t");
        on_small_stack(move || {
            let _ = sql::parse(&sql);
        });
    }

    #[test]
    fn generated_queries_list_exactly_their_tables(
        names in prop::collection::vec(table_name(), 1..8),
        target in table_name(),
        db in prop::option::of("[a-z]{1,5}"),
    ) {
        // SELECT over all of them, joined and in subqueries.
        let mut sql = format!("SELECT * FROM {}", names[0]);
        for (i, n) in names.iter().enumerate().skip(1) {
            if i % 2 == 0 {
                sql.push_str(&format!(" JOIN `{n}` AS a{i} ON 1"));
            } else {
                sql.push_str(&format!(" WHERE x IN (SELECT y FROM {n})"));
                break;
            }
        }
        let info = sql::parse(&sql).unwrap();
        let listed: Vec<&str> = info.tables.iter().map(|t| t.name.as_str()).collect();
        let mut expected: Vec<&str> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if !expected.contains(&n.as_str()) {
                expected.push(n);
            }
            if i % 2 == 1 {
                break;
            }
        }
        prop_assert_eq!(listed, expected);
        prop_assert!(info.tables.iter().all(|t| t.operations == [Operation::Select]));

        // INSERT ... SELECT: the target inserted into, the sources read.
        let qualified = match &db {
            Some(db) => format!("{db}.{target}"),
            None => target.clone(),
        };
        let sources: Vec<String> = names.iter().map(|n| format!("SELECT * FROM {n}")).collect();
        let sql = format!("INSERT INTO {qualified} {}", sources.join(" UNION "));
        let info = sql::parse(&sql).unwrap();
        prop_assert_eq!(&info.statements, &[Operation::Insert]);
        let first = &info.tables[0];
        prop_assert_eq!(&first.name, &qualified);
        prop_assert_eq!(&first.database, &db);
        prop_assert_eq!(&first.table, &target);
        prop_assert_eq!(first.operations[0], Operation::Insert);
        for n in &names {
            let t = info.table(n).unwrap();
            prop_assert!(t.operations.contains(&Operation::Select));
        }
    }
}

/// A number or single-quoted string of the same kind as `literal`, from `seed`.
fn other_literal(literal: &str, seed: u64) -> String {
    if literal.starts_with('\'') {
        const PIECES: &[&str] = &[
            "a", "''", "\\'", "\\\\", " ", "x;y", "é", "--", "/*", "`", "\"",
        ];
        let mut s = String::from("'");
        let mut n = seed;
        for _ in 0..(seed % 5) {
            s.push_str(PIECES[(n % PIECES.len() as u64) as usize]);
            n /= PIECES.len() as u64;
        }
        s.push('\'');
        s
    } else {
        (seed % 100_000).to_string()
    }
}

/// Replaces the corpus query's plain literals (whole-word numbers, simple
/// single-quoted strings) with others of the same kind.
fn reliteral(sql: &str, seeds: &[u64]) -> String {
    let (mut out, mut k) = (String::new(), 0);
    let b = sql.as_bytes();
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let start = i;
        if b[i] == b'\'' {
            let end = i + 1 + sql[i + 1..].find('\'').unwrap();
            i = end + 1;
        } else if b[i].is_ascii_digit() && (i == 0 || !word(b[i - 1])) {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && word(b[i]) {
                out.push_str(&sql[start..i]);
                continue;
            }
        } else if word(b[i]) {
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            out.push_str(&sql[start..i]);
            continue;
        } else {
            let c = sql[i..].chars().next().unwrap();
            i += c.len_utf8();
            out.push(c);
            continue;
        }
        out.push_str(&other_literal(&sql[start..i], seeds[k % seeds.len()]));
        k += 1;
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// The analysis cache keys on a query's shape: queries that differ only in
    /// their literals share the shape, and must share the analysis.
    #[test]
    fn queries_alike_but_for_literals_share_shape_and_analysis(
        q in prop::sample::select(CORPUS),
        seeds in prop::collection::vec(any::<u64>(), 1..8),
    ) {
        let other = reliteral(q, &seeds);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        prop_assert!(sql::shape(q, &mut a));
        prop_assert!(sql::shape(&other, &mut b), "{}", other);
        prop_assert_eq!(&a, &b, "{} / {}", q, other);
        let (pa, pb) = (sql::parse(q).unwrap(), sql::parse(&other));
        let pb = pb.map_err(|e| format!("{other}: {e}")).unwrap();
        prop_assert_eq!(pa.statements, pb.statements);
        prop_assert_eq!(pa.tables, pb.tables);
        prop_assert_eq!(pa.use_database, pb.use_database);
    }

    /// Any text shapes without a panic, and a shape never holds 0xFF but in a marker.
    #[test]
    fn any_text_shapes(sql in "\\PC{0,200}") {
        let mut out = Vec::new();
        if sql::shape(&sql, &mut out) {
            let mut i = 0;
            while i < out.len() {
                if out[i] == 0xFF {
                    prop_assert!(matches!(out.get(i + 1), Some(b'n' | b's')));
                    i += 1;
                }
                i += 1;
            }
        }
    }
}

#[test]
fn shapes_keep_everything_but_literals() {
    let shape = |s: &str| {
        let mut out = Vec::new();
        sql::shape(s, &mut out).then(|| String::from_utf8_lossy(&out).replace('\u{FFFD}', "#"))
    };
    assert_eq!(
        shape("SELECT `a'5`, \"b'6\", t1.c, 1abc FROM t2 WHERE x = -7.25 AND y = 'it''s \\' ok'")
            .as_deref(),
        Some("SELECT `a'5`, \"b'6\", t1.c, 1abc FROM t2 WHERE x = -#n AND y = #s")
    );
    // Comments are kept whole, quotes in them included.
    assert_eq!(
        shape("SELECT 1 /* it's 2 */ -- 3 'x\n# 4 '\nFROM t").as_deref(),
        Some("SELECT #n /* it's 2 */ -- 3 'x\n# 4 '\nFROM t")
    );
    // A placeholder is not a number.
    assert_ne!(shape("SELECT ? FROM t"), shape("SELECT 1 FROM t"));
    for open in [
        "SELECT 'x",
        "SELECT `x",
        "SELECT /* x",
        "SELECT \"x\\\"",
        "SELECT 1.5e3",
    ] {
        assert_eq!(shape(open), None, "{open}");
    }
}
