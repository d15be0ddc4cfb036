//! SQL analysis, table by table: which statements a text holds, which tables it
//! touches and what it does to each, as Envoy's mysql_proxy metadata lists them.
//! The property tests (random text, mutated queries) are in sql_props.rs.

use Operation::*;
use legate_mysql_proxy::sql::{self, MAX_DEPTH_ESTIMATE, Operation, QueryInfo};

fn parse(sql: &str) -> QueryInfo {
    match sql::parse(sql) {
        Ok(info) => info,
        Err(e) => panic!("{sql:?}: {e}"),
    }
}

/// Tables as `(name, operations)`, in order.
fn tables(info: &QueryInfo) -> Vec<(String, Vec<&'static str>)> {
    info.tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.operations.iter().map(|op| op.as_str()).collect(),
            )
        })
        .collect()
}

/// A case: the text, its statements, its tables as `(name, operations)`.
type Case<'a> = (&'a str, &'a [Operation], &'a [(&'a str, &'a [&'a str])]);

/// Checks each case.
fn check(cases: &[Case]) {
    for &(sql, statements, expected) in cases {
        let info = parse(sql);
        assert_eq!(info.statements, statements, "statements of {sql:?}");
        let expected: Vec<(String, Vec<&str>)> = expected
            .iter()
            .map(|(name, ops)| (name.to_string(), ops.to_vec()))
            .collect();
        assert_eq!(tables(&info), expected, "tables of {sql:?}");
    }
}

fn is_err(sql: &str) -> String {
    match sql::parse(sql) {
        Ok(info) => panic!("{sql:?} parsed: {info:?}"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------- SELECT

#[test]
fn sysbench_queries() {
    check(&[
        (
            "SELECT c FROM sbtest1 WHERE id=5021",
            &[Select],
            &[("sbtest1", &["select"])],
        ),
        (
            "SELECT DISTINCT c FROM sbtest3 WHERE id BETWEEN 4820 AND 4919 ORDER BY c",
            &[Select],
            &[("sbtest3", &["select"])],
        ),
        (
            "SELECT SUM(k) FROM sbtest2 WHERE id BETWEEN 1 AND 100",
            &[Select],
            &[("sbtest2", &["select"])],
        ),
        (
            "UPDATE sbtest1 SET k=k+1 WHERE id=5021",
            &[Update],
            &[("sbtest1", &["update"])],
        ),
        (
            "DELETE FROM sbtest1 WHERE id=5021",
            &[Delete],
            &[("sbtest1", &["delete"])],
        ),
        (
            "INSERT INTO sbtest1 (id, k, c, pad) VALUES (5021, 4999, '1234-5678', 'abc')",
            &[Insert],
            &[("sbtest1", &["insert"])],
        ),
    ]);
}

#[test]
fn every_table_a_select_reads_is_listed() {
    check(&[
        (
            "SELECT a FROM t1 JOIN t2 ON t1.id = t2.id LEFT JOIN (SELECT * FROM t3) d ON 1 \
             WHERE x IN (SELECT y FROM t4) AND EXISTS (SELECT 1 FROM t5) \
             GROUP BY a HAVING max(a) > (SELECT 1 FROM t6)",
            &[Select],
            &[
                ("t1", &["select"]),
                ("t2", &["select"]),
                ("t3", &["select"]),
                ("t4", &["select"]),
                ("t5", &["select"]),
                ("t6", &["select"]),
            ],
        ),
        // A subquery in the select list comes first, as written.
        (
            "SELECT (SELECT max(x) FROM u) FROM t",
            &[Select],
            &[("u", &["select"]), ("t", &["select"])],
        ),
        (
            "SELECT 1 FROM a UNION SELECT 2 FROM b UNION ALL (SELECT 3 FROM c)",
            &[Select],
            &[("a", &["select"]), ("b", &["select"]), ("c", &["select"])],
        ),
        (
            "SELECT * FROM t1, t2 NATURAL JOIN t3 STRAIGHT_JOIN t4",
            &[Select],
            &[
                ("t1", &["select"]),
                ("t2", &["select"]),
                ("t3", &["select"]),
                ("t4", &["select"]),
            ],
        ),
        (
            "SELECT * FROM t1 WHERE a = ANY (SELECT b FROM t2) OR NOT EXISTS (SELECT * FROM t3)",
            &[Select],
            &[
                ("t1", &["select"]),
                ("t2", &["select"]),
                ("t3", &["select"]),
            ],
        ),
        (
            "SELECT * FROM t PARTITION (p0) USE INDEX (i) WHERE a = 1 FOR UPDATE",
            &[Select],
            &[("t", &["select"])],
        ),
        ("SELECT a INTO @v FROM t", &[Select], &[("t", &["select"])]),
        // No table at all.
        ("SELECT 1", &[Select], &[]),
        ("SELECT @@version, DATABASE(), NOW()", &[Select], &[]),
        (
            "SELECT * FROM JSON_TABLE('[1]', '$[*]' COLUMNS (a INT PATH '$')) j",
            &[Select],
            &[],
        ),
    ]);
}

#[test]
fn aliases_are_not_tables() {
    check(&[
        (
            "SELECT p.id FROM payments AS p JOIN users u ON u.id = p.user_id WHERE p.x = u.y",
            &[Select],
            &[("payments", &["select"]), ("users", &["select"])],
        ),
        (
            "SELECT d.c FROM (SELECT c FROM t) AS d",
            &[Select],
            &[("t", &["select"])],
        ),
        // Each mention once, whatever the alias.
        (
            "SELECT * FROM t a JOIN t b ON a.id = b.parent",
            &[Select],
            &[("t", &["select"])],
        ),
    ]);
}

#[test]
fn cte_names_are_not_tables_but_their_sources_are() {
    check(&[
        (
            "WITH x AS (SELECT * FROM base) SELECT * FROM x JOIN other ON 1",
            &[Select],
            &[("base", &["select"]), ("other", &["select"])],
        ),
        // A later CTE sees an earlier one; an earlier one does not see a later
        // one, so `y` inside `x` is a table (MySQL resolves it so).
        (
            "WITH x AS (SELECT * FROM y), y AS (SELECT * FROM x) SELECT * FROM x, y",
            &[Select],
            &[("y", &["select"])],
        ),
        // Without RECURSIVE a CTE does not see itself.
        (
            "WITH x AS (SELECT * FROM x) SELECT * FROM x",
            &[Select],
            &[("x", &["select"])],
        ),
        (
            "WITH RECURSIVE r (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) \
             SELECT * FROM r",
            &[Select],
            &[],
        ),
        // The name is in scope only inside its query.
        (
            "SELECT * FROM c, (WITH c AS (SELECT 1 FROM t2) SELECT * FROM c) d",
            &[Select],
            &[("c", &["select"]), ("t2", &["select"])],
        ),
        (
            "SELECT * FROM t1 WHERE EXISTS (WITH c AS (SELECT a FROM t2) SELECT * FROM c)",
            &[Select],
            &[("t1", &["select"]), ("t2", &["select"])],
        ),
        // A qualified name is never a CTE.
        (
            "WITH x AS (SELECT 1) SELECT * FROM shop.x",
            &[Select],
            &[("shop.x", &["select"])],
        ),
        (
            "INSERT INTO t WITH x AS (SELECT * FROM u) SELECT * FROM x",
            &[Insert],
            &[("t", &["insert"]), ("u", &["select"])],
        ),
    ]);
}

// ---------------------------------------------------------------- INSERT

#[test]
fn insert_and_replace() {
    check(&[
        (
            "INSERT INTO t VALUES (1), (2)",
            &[Insert],
            &[("t", &["insert"])],
        ),
        (
            "INSERT IGNORE INTO t VALUES (1)",
            &[Insert],
            &[("t", &["insert"])],
        ),
        ("INSERT t (a) VALUES (1)", &[Insert], &[("t", &["insert"])]),
        (
            "INSERT INTO t SET a = 1, b = (SELECT 1 FROM u)",
            &[Insert],
            &[("t", &["insert"]), ("u", &["select"])],
        ),
        (
            "INSERT INTO t SELECT * FROM u WHERE u.a IN (SELECT b FROM v)",
            &[Insert],
            &[("t", &["insert"]), ("u", &["select"]), ("v", &["select"])],
        ),
        // Reading the target too: both operations.
        (
            "INSERT INTO t SELECT * FROM t",
            &[Insert],
            &[("t", &["insert", "select"])],
        ),
        // REPLACE deletes the rows it replaces.
        (
            "REPLACE INTO t VALUES (1)",
            &[Insert],
            &[("t", &["insert", "delete"])],
        ),
        (
            "REPLACE INTO t SELECT * FROM u",
            &[Insert],
            &[("t", &["insert", "delete"]), ("u", &["select"])],
        ),
        // ON DUPLICATE KEY UPDATE updates rows.
        (
            "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)",
            &[Insert],
            &[("t", &["insert", "update"])],
        ),
        (
            "INSERT INTO t VALUES (1) AS new ON DUPLICATE KEY UPDATE a = new.a",
            &[Insert],
            &[("t", &["insert", "update"])],
        ),
        (
            "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = (SELECT max(a) FROM u)",
            &[Insert],
            &[("t", &["insert", "update"]), ("u", &["select"])],
        ),
    ]);
}

// ---------------------------------------------------------------- UPDATE

#[test]
fn update() {
    check(&[
        (
            "UPDATE t SET a = 1 WHERE x IN (SELECT x FROM u)",
            &[Update],
            &[("t", &["update"]), ("u", &["select"])],
        ),
        (
            "UPDATE t SET a = (SELECT max(b) FROM u) ORDER BY id LIMIT 10",
            &[Update],
            &[("t", &["update"]), ("u", &["select"])],
        ),
        (
            "UPDATE shop.t AS a SET a.x = 1",
            &[Update],
            &[("shop.t", &["update"])],
        ),
        // Every table of a multi-table UPDATE may be changed.
        (
            "UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = t2.b WHERE t2.c IN (SELECT c FROM t3)",
            &[Update],
            &[
                ("t1", &["update"]),
                ("t2", &["update"]),
                ("t3", &["select"]),
            ],
        ),
        // A derived table in the list is not changed, its source only read.
        (
            "UPDATE t1 JOIN (SELECT id FROM t3) d ON d.id = t1.id SET t1.a = 1",
            &[Update],
            &[("t1", &["update"]), ("t3", &["select"])],
        ),
    ]);
}

#[test]
fn the_comma_form_of_a_multi_table_update_is_a_parse_error() {
    // A gap in sqlparser 0.63; the JOIN form above parses.
    let e = is_err("UPDATE t1, t2 SET t1.a = t2.b WHERE t1.id = t2.id");
    assert!(e.contains("Expected: SET"), "{e}");
}

// ---------------------------------------------------------------- DELETE, TRUNCATE

#[test]
fn delete_and_truncate() {
    check(&[
        (
            "DELETE FROM t WHERE id = 1",
            &[Delete],
            &[("t", &["delete"])],
        ),
        (
            "DELETE FROM t ORDER BY id LIMIT 10",
            &[Delete],
            &[("t", &["delete"])],
        ),
        (
            "DELETE FROM shop.t WHERE id IN (SELECT id FROM u)",
            &[Delete],
            &[("shop.t", &["delete"]), ("u", &["select"])],
        ),
        // Multi-table: the targets are deleted from, the rest only read.
        (
            "DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t2.x = 1",
            &[Delete],
            &[("t1", &["delete"]), ("t2", &["select"])],
        ),
        (
            "DELETE a FROM t1 AS a JOIN t2 AS b ON a.id = b.id",
            &[Delete],
            &[("t1", &["delete"]), ("t2", &["select"])],
        ),
        (
            "DELETE a, b FROM t1 AS a JOIN t2 AS b ON a.id = b.id JOIN t3 ON 1",
            &[Delete],
            &[
                ("t1", &["delete"]),
                ("t2", &["delete"]),
                ("t3", &["select"]),
            ],
        ),
        (
            "DELETE t1 FROM shop.t1 JOIN t2",
            &[Delete],
            &[("shop.t1", &["delete"]), ("t2", &["select"])],
        ),
        (
            "DELETE FROM t1, t2 USING t1 JOIN t2 JOIN t3 WHERE t3.x = 1",
            &[Delete],
            &[
                ("t1", &["delete"]),
                ("t2", &["delete"]),
                ("t3", &["select"]),
            ],
        ),
        (
            "DELETE FROM a USING t1 AS a JOIN t2 ON 1",
            &[Delete],
            &[("t1", &["delete"]), ("t2", &["select"])],
        ),
        // A target naming no listed table (MySQL refuses it) is kept as written.
        (
            "DELETE x FROM t1 JOIN t2",
            &[Delete],
            &[("x", &["delete"]), ("t1", &["select"]), ("t2", &["select"])],
        ),
        // TRUNCATE removes every row.
        ("TRUNCATE TABLE t", &[Delete], &[("t", &["delete"])]),
        ("TRUNCATE shop.t", &[Delete], &[("shop.t", &["delete"])]),
    ]);
}

// ---------------------------------------------------------------- DDL

#[test]
fn create_drop_alter_rename() {
    check(&[
        (
            "CREATE TABLE t (id INT PRIMARY KEY, p INT, FOREIGN KEY (p) REFERENCES parent(id))",
            &[Create],
            &[("t", &["create"])],
        ),
        (
            "CREATE TEMPORARY TABLE IF NOT EXISTS shop.t (a INT)",
            &[Create],
            &[("shop.t", &["create"])],
        ),
        (
            "CREATE TABLE t AS SELECT * FROM u",
            &[Create],
            &[("t", &["create"]), ("u", &["select"])],
        ),
        (
            "CREATE TABLE t LIKE u",
            &[Create],
            &[("t", &["create"]), ("u", &["select"])],
        ),
        // An index belongs to its table, as Envoy reports it.
        ("CREATE INDEX i ON t (a)", &[Create], &[("t", &["create"])]),
        (
            "CREATE UNIQUE INDEX i ON shop.t (a, b)",
            &[Create],
            &[("shop.t", &["create"])],
        ),
        (
            "CREATE VIEW v AS SELECT * FROM t",
            &[Create],
            &[("v", &["create"]), ("t", &["select"])],
        ),
        ("CREATE DATABASE shop", &[Create], &[]),
        (
            "DROP TABLE a, shop.b",
            &[Drop],
            &[("a", &["drop"]), ("shop.b", &["drop"])],
        ),
        (
            "DROP TEMPORARY TABLE IF EXISTS t",
            &[Drop],
            &[("t", &["drop"])],
        ),
        ("DROP VIEW v", &[Drop], &[("v", &["drop"])]),
        ("DROP INDEX i ON t", &[Drop], &[("t", &["drop"])]),
        ("DROP DATABASE shop", &[Drop], &[]),
        (
            "ALTER TABLE t ADD COLUMN c INT",
            &[Alter],
            &[("t", &["alter"])],
        ),
        (
            "ALTER TABLE t RENAME TO u",
            &[Alter],
            &[("t", &["alter"]), ("u", &["alter"])],
        ),
        (
            "RENAME TABLE a TO b, shop.c TO shop.d",
            &[Alter],
            &[
                ("a", &["alter"]),
                ("b", &["alter"]),
                ("shop.c", &["alter"]),
                ("shop.d", &["alter"]),
            ],
        ),
    ]);
}

// ---------------------------------------------------------------- SHOW and the rest

#[test]
fn show_lists_no_table() {
    check(&[
        ("SHOW TABLES", &[Show], &[]),
        ("SHOW FULL TABLES FROM shop LIKE 'p%'", &[Show], &[]),
        ("SHOW CREATE TABLE t", &[Show], &[]),
        ("SHOW COLUMNS FROM t", &[Show], &[]),
        ("SHOW INDEX FROM t", &[Show], &[]),
        ("SHOW VARIABLES LIKE 'x'", &[Show], &[]),
        ("SHOW WARNINGS", &[Show], &[]),
        ("SHOW FULL PROCESSLIST", &[Show], &[]),
        ("SHOW DATABASES", &[Show], &[]),
        ("SHOW ENGINE INNODB STATUS", &[Show], &[]),
        // DESCRIBE is MySQL's SHOW COLUMNS.
        ("DESCRIBE t", &[Show], &[]),
        ("DESC shop.t", &[Show], &[]),
    ]);
}

#[test]
fn session_and_transaction_statements_are_other() {
    check(&[
        ("SET NAMES utf8mb4", &[Other], &[]),
        (
            "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
            &[Other],
            &[],
        ),
        ("SET autocommit = 1", &[Other], &[]),
        (
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            &[Other],
            &[],
        ),
        ("BEGIN", &[Other], &[]),
        ("START TRANSACTION", &[Other], &[]),
        ("START TRANSACTION READ ONLY", &[Other], &[]),
        ("COMMIT", &[Other], &[]),
        ("ROLLBACK", &[Other], &[]),
        ("SAVEPOINT s", &[Other], &[]),
        ("ROLLBACK TO SAVEPOINT s", &[Other], &[]),
        ("RELEASE SAVEPOINT s", &[Other], &[]),
        ("USE shop", &[Other], &[]),
        ("KILL QUERY 5", &[Other], &[]),
        ("FLUSH PRIVILEGES", &[Other], &[]),
        ("GRANT SELECT ON shop.* TO 'u'@'%'", &[Other], &[]),
        ("CALL p(1)", &[Other], &[]),
        // A query inside reads its tables.
        (
            "SET @x = (SELECT max(id) FROM t)",
            &[Other],
            &[("t", &["select"])],
        ),
        // Tables an Other statement names directly get `other`.
        (
            "LOCK TABLES t READ, u WRITE",
            &[Other],
            &[("t", &["other"]), ("u", &["other"])],
        ),
        ("ANALYZE TABLE t", &[Other], &[("t", &["other"])]),
        // A nested statement is listed by its own rules.
        ("EXPLAIN SELECT * FROM t", &[Other], &[("t", &["select"])]),
        ("EXPLAIN DELETE FROM t", &[Other], &[("t", &["delete"])]),
        (
            "EXPLAIN ANALYZE SELECT * FROM t",
            &[Other],
            &[("t", &["select"])],
        ),
    ]);
}

#[test]
fn use_sets_the_database_and_the_last_one_wins() {
    assert_eq!(parse("USE shop").use_database.as_deref(), Some("shop"));
    assert_eq!(
        parse("USE `Shop Db`").use_database.as_deref(),
        Some("Shop Db")
    );
    assert_eq!(
        parse("USE a; SELECT 1; USE b").use_database.as_deref(),
        Some("b")
    );
    assert_eq!(parse("SELECT 1").use_database, None);
}

#[test]
fn several_statements_list_everything() {
    let info = parse("INSERT INTO t VALUES (1); SELECT * FROM u JOIN t; USE shop; SHOW TABLES;");
    assert_eq!(info.statements, [Insert, Select, Other, Show]);
    assert_eq!(
        tables(&info),
        [
            ("t".to_string(), vec!["insert", "select"]),
            ("u".to_string(), vec!["select"]),
        ]
    );
    assert_eq!(info.use_database.as_deref(), Some("shop"));
}

// ---------------------------------------------------------------- names

#[test]
fn names_are_unquoted_split_and_keep_their_case() {
    let info =
        parse("SELECT * FROM `shop`.`Pay ments` JOIN Users JOIN users JOIN `a.b` JOIN shop.x");
    let t = info.table("shop.Pay ments").expect("shop.Pay ments");
    assert_eq!(t.database.as_deref(), Some("shop"));
    assert_eq!(t.table, "Pay ments");
    assert_eq!(t.operations, [Select]);
    assert!(info.table("Users").is_some());
    assert!(info.table("users").is_some());
    // A dot inside backticks is part of the name.
    let t = info.table("a.b").expect("a.b");
    assert_eq!((t.database.as_deref(), t.table.as_str()), (None, "a.b"));
    let t = info.table("shop.x").expect("shop.x");
    assert_eq!(
        (t.database.as_deref(), t.table.as_str()),
        (Some("shop"), "x")
    );
    let names: Vec<&str> = info.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["shop.Pay ments", "Users", "users", "a.b", "shop.x"]);
    // `db.t` and `t` stay apart: the current database is not known here.
    let info = parse("SELECT * FROM shop.t JOIN t");
    assert_eq!(info.tables.len(), 2);
    assert_eq!(info.tables[1].database, None);
}

#[test]
fn operations_keep_first_seen_order_without_duplicates() {
    let info =
        parse("SELECT * FROM t; DELETE FROM t; INSERT INTO t SELECT * FROM t; SELECT 1 FROM t");
    assert_eq!(
        tables(&info),
        [("t".to_string(), vec!["select", "delete", "insert"])]
    );
}

#[test]
fn operation_names_and_order() {
    let names: Vec<&str> = Operation::ALL.iter().map(|op| op.as_str()).collect();
    assert_eq!(
        names,
        [
            "select", "insert", "update", "delete", "create", "drop", "alter", "show", "other"
        ]
    );
    for (i, op) in Operation::ALL.iter().enumerate() {
        assert_eq!(*op as usize, i);
        assert_eq!(op.to_string(), op.as_str());
    }
}

// ---------------------------------------------------------------- errors and limits

#[test]
fn empty_text_is_no_statement() {
    for sql in [
        "",
        "   \n\t",
        "/* just a comment */",
        "-- a comment",
        "# a comment",
        ";",
        " ; ;",
    ] {
        assert_eq!(parse(sql), QueryInfo::default(), "{sql:?}");
    }
}

#[test]
fn unparseable_text_is_an_error_with_the_parser_message() {
    let e = is_err("SELEC 1");
    assert!(
        e.contains("Expected: an SQL statement, found: SELEC"),
        "{e}"
    );
    let e = is_err("SELECT * FROM t WHERE");
    assert!(e.contains("Expected: an expression"), "{e}");
    let e = is_err("SELECT 'unterminated");
    assert!(e.contains("Unterminated string literal"), "{e}");
    let e = sql::parse("SELECT 1; SELEC 2").unwrap_err();
    assert_eq!(e.message(), e.to_string());
    assert!(e.message().contains("Line: 1, Column: 11"), "{e}");
    for sql in [
        "DELETE t1.* FROM t1",
        "LOAD DATA INFILE 'x' INTO TABLE t",
        "TABLE t",
    ] {
        is_err(sql);
    }
}

/// Runs `f` on a thread with a stack of `kib` KiB: a stack overflow aborts the
/// test binary, which fails the run.
fn on_stack<T: Send + 'static>(kib: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(kib * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let n = 100_000;
    let deep = [
        format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
        format!("SELECT * FROM {}t{}", "(".repeat(n), ")".repeat(n)),
        format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n)),
        format!("SELECT {}1", "NOT ".repeat(n)),
        format!("SELECT {}1", "- ".repeat(n)),
        format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n)),
        format!(
            "SELECT {}1{}",
            "CASE WHEN 1 THEN ".repeat(n),
            " END".repeat(n)
        ),
        // Chains the parser builds in a loop, no recursion: refused up front.
        format!("SELECT 1{}", "+1".repeat(n)),
        format!("SELECT 1 FROM t WHERE a=1{}", " OR a=1".repeat(n)),
        format!("SELECT a{}", " IS NULL".repeat(n)),
        format!("SELECT a{}", "->'$.a'".repeat(n)),
        format!("SELECT 1,1{}", " UNION SELECT 1,1".repeat(n)),
        format!("SELECT a{}", ".b".repeat(n)),
    ];
    for sql in deep {
        let head: String = sql.chars().take(40).collect();
        let result = on_stack(2048, move || sql::parse(&sql));
        assert!(result.is_err(), "{head}...");
    }
}

/// Nested shapes, as `(head, open, middle, close, tail)`: `open` and `close`
/// repeat once per level.
const NESTED: [(&str, &str, &str, &str, &str); 8] = [
    ("SELECT * FROM ", "(SELECT * FROM ", "t", ") x", ""),
    ("INSERT INTO t ", "(SELECT * FROM ", "u", ")", ""),
    ("SELECT 1 UNION ", "(SELECT 1 UNION ", "SELECT 1", ")", ""),
    ("", "(", "SELECT 1", ")", ""),
    ("SELECT ", "sum(", "1", ") OVER ()", ""),
    ("SELECT 1 WHERE ", "EXISTS (SELECT 1 WHERE ", "1", ")", ""),
    ("", "IF 1 THEN ", "SELECT 1; ", "END IF; ", ""),
    ("DELETE FROM t WHERE a IN ", "(SELECT a FROM ", "u", ")", ""),
];

#[test]
fn nesting_at_the_limits_fits_a_small_stack() {
    // The costliest shapes measured, at every depth up to past the nesting
    // limit: each parses or stops at the limit within 1.25 MiB of stack, even in
    // a debug build (measured: about 0.85 MiB at worst).
    for (head, open, middle, close, tail) in NESTED {
        let mut parsed = 0;
        for depth in 1..=40 {
            let sql = format!(
                "{head}{}{middle}{}{tail}",
                open.repeat(depth),
                close.repeat(depth)
            );
            if on_stack(1280, move || sql::parse(&sql).is_ok()) {
                parsed = depth;
            }
        }
        assert!(parsed >= 10, "{open}: parsed only to depth {parsed}");
    }
    // The longest chains the depth check lets through.
    let chains = [
        format!("SELECT 1{}", "+1".repeat(MAX_DEPTH_ESTIMATE / 2 - 5)),
        format!("SELECT a{}", " IS NULL".repeat(MAX_DEPTH_ESTIMATE / 2 - 5)),
        format!("SELECT a{}", "->'$.a'".repeat(MAX_DEPTH_ESTIMATE / 2 - 5)),
        format!(
            "SELECT 1,1{}",
            " UNION SELECT 1,1".repeat(MAX_DEPTH_ESTIMATE - 10)
        ),
        format!(
            "SELECT 1 FROM t WHERE (a=1){}",
            " OR (a=1)".repeat(MAX_DEPTH_ESTIMATE / 2 - 10)
        ),
    ];
    for sql in chains {
        let head: String = sql.chars().take(40).collect();
        let result = on_stack(1280, move || sql::parse(&sql).map(|info| info.statements));
        assert_eq!(result, Ok(vec![Select]), "{head}...");
    }
}

#[test]
fn long_lists_are_not_deep() {
    let ids: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    let sql = format!("SELECT * FROM t WHERE id IN ({})", ids.join(","));
    assert_eq!(tables(&parse(&sql)), [("t".to_string(), vec!["select"])]);
    let rows: Vec<String> = (0..20_000).map(|i| format!("({i}, -1, 'x')")).collect();
    let sql = format!("INSERT INTO t VALUES {}", rows.join(","));
    assert_eq!(tables(&parse(&sql)), [("t".to_string(), vec!["insert"])]);
    let cols: Vec<String> = (0..5_000).map(|i| format!("c{i} + 1 AS a{i}")).collect();
    let sql = format!("SELECT {} FROM t", cols.join(", "));
    assert_eq!(parse(&sql).statements, [Select]);
    // Many tables: each listed once, found by name without a quadratic search.
    let many: Vec<String> = (0..20_000).map(|i| format!("t{}", i % 10_000)).collect();
    let sql = format!("SELECT * FROM {}", many.join(", "));
    assert_eq!(parse(&sql).tables.len(), 10_000);
}

#[test]
fn executable_comments_are_sql() {
    // MySQL runs `/*! ... */` and MariaDB also `/*M! ... */`: their text is SQL.
    for (q, name, op) in [
        (
            "/*!INSERT*/ INTO payments VALUES (1)",
            "payments",
            Operation::Insert,
        ),
        (
            "SELECT 1 /*!50000 , (SELECT 1 FROM secret) */",
            "secret",
            Operation::Select,
        ),
        ("/*M!100000 DELETE FROM t */", "t", Operation::Delete),
        ("SELECT 1; /*M! DROP TABLE t */", "t", Operation::Drop),
    ] {
        let info = sql::parse(q).unwrap();
        assert_eq!(
            info.table(name).map(|t| t.operations.clone()),
            Some(vec![op]),
            "{q}"
        );
    }
}
