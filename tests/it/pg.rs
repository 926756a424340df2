//! The PostgreSQL wire protocol with real clients: `tokio-postgres` (the extended protocol,
//! binary results, typed parameters, cancel requests) and `psql` (the simple protocol and
//! the catalog queries of `\dt`, `\dn`, `\d`), against a server with API keys: the rows of
//! `POST …/sql`, every refusal with its SQLSTATE, a cancelled or abandoned query ended
//! with the server still answering, and TLS.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls, SimpleQueryMessage};

use crate::common::{
    TestServer, analyst_server, eightfold_chain, ingest_spans, metric, route_rows,
    wait_for_no_query,
};

/// A client logged in to database `db` with `key` as the password.
async fn connect(
    server: &TestServer,
    db: &str,
    key: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    Ok(connect_with_task(server, db, key).await?.0)
}

/// [`connect`], and the task that holds the connection's socket.
async fn connect_with_task(
    server: &TestServer,
    db: &str,
    key: Option<&str>,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(server.pg.port())
        .user("analyst")
        .dbname(db);
    if let Some(key) = key {
        config.password(key);
    }
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// The error's SQLSTATE.
fn state(e: &tokio_postgres::Error) -> &SqlState {
    e.code().unwrap_or_else(|| panic!("no SQLSTATE in {e:?}"))
}

/// The server's message in the error.
fn message(e: &tokio_postgres::Error) -> &str {
    e.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"))
        .message()
}

/// The number of spans in the client's home workspace.
async fn span_count(client: &impl GenericClient) -> i64 {
    client
        .query_one("SELECT count(*) FROM spans", &[])
        .await
        .unwrap()
        .get(0)
}

/// Asserts that the client has no transaction open: a cursor without HOLD needs one.
async fn assert_no_transaction(client: &impl GenericClient) {
    let e = client
        .simple_query("DECLARE probe CURSOR FOR SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(state(&e), &SqlState::NO_ACTIVE_SQL_TRANSACTION, "{e:?}");
}

/// The rows of a simple query as text by column name.
async fn simple_rows(client: &Client, sql: &str) -> Vec<BTreeMap<String, String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), row.get(i).unwrap_or("null").into()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_query_over_the_extended_and_simple_protocols() {
    let (server, _keys) = analyst_server().await;
    let alpha = connect(&server, "alpha", Some("k-alpha")).await.unwrap();

    // A GROUP BY, in the simple protocol (text) and the extended one (binary): the rows of
    // the SQL route.
    let group_by = "SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name";
    let expected = route_rows(&server, "k-alpha", "alpha", group_by).await;
    assert_eq!(expected.len(), 2, "{expected:?}");
    assert_eq!(simple_rows(&alpha, group_by).await, expected);
    let binary: Vec<BTreeMap<String, String>> = alpha
        .query(group_by, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            BTreeMap::from([
                ("name".to_string(), row.get::<_, String>("name")),
                ("n".to_string(), row.get::<_, i64>("n").to_string()),
            ])
        })
        .collect();
    assert_eq!(binary, expected);

    // Typed parameters, bound in binary by the client.
    let n: i64 = alpha
        .query_one(
            "SELECT count(*) FROM spans WHERE name = $1 AND start_time >= $2",
            &[&"checkout", &DateTime::<Utc>::UNIX_EPOCH],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // A prepared statement, executed twice.
    let statement = alpha
        .prepare("SELECT count(*) AS n FROM spans WHERE name = $1")
        .await
        .unwrap();
    for (name, count) in [("cart", 1i64), ("nothing", 0)] {
        let row = alpha.query_one(&statement, &[&name]).await.unwrap();
        assert_eq!(row.get::<_, i64>("n"), count);
    }

    // timestamptz and jsonb.
    let row = alpha
        .query_one(
            "SELECT start_time, attributes, duration_ns FROM spans WHERE name = 'cart'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.columns()[0].type_(),
        &tokio_postgres::types::Type::TIMESTAMPTZ
    );
    let start: DateTime<Utc> = row.get(0);
    assert!(start > DateTime::<Utc>::UNIX_EPOCH, "{start}");
    let attributes: serde_json::Value = row.get(1);
    assert!(
        attributes["http.route"].to_string().contains("cart"),
        "{attributes}"
    );

    // Grafana's time-series panel of docs/analysts.md, its macros expanded as Grafana
    // expands them, over the extended protocol with binary results (as pgx asks).
    let grafana = "SELECT floor(extract(epoch from start_time)/60)*60 AS \"time\", \
                   service_name AS metric, \
                   avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) AS error_rate, \
                   approx_percentile_cont(duration_ns / 1e6, 0.95) AS p95_ms \
                   FROM spans \
                   WHERE start_time BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' \
                   GROUP BY 1, 2 ORDER BY 1";
    let panel = alpha.query(grafana, &[]).await.unwrap();
    assert_eq!(panel.len(), 1, "one minute, one service");
    assert!(panel[0].get::<_, f64>("time") > 0.0);
    assert_eq!(panel[0].get::<_, f64>("error_rate"), 0.0);
    assert!(panel[0].get::<_, Option<f64>>("p95_ms").is_some());

    // The catalog: information_schema, and one schema per readable workspace.
    let tables = simple_rows(
        &alpha,
        "SELECT table_schema, table_name FROM information_schema.tables \
         WHERE table_catalog = 'spanlake' AND table_schema <> 'information_schema' \
         ORDER BY 1, 2",
    )
    .await;
    let names: Vec<_> = tables
        .iter()
        .map(|r| format!("{}.{}", r["table_schema"], r["table_name"]))
        .collect();
    assert_eq!(names, ["alpha.spans", "alpha.traces"]);

    // What drivers send around queries: settings, SHOW, transactions, empty queries.
    alpha
        .batch_execute("SET extra_float_digits = 3; SET application_name = 'test'; -- ping")
        .await
        .unwrap();
    let zone = simple_rows(&alpha, "SHOW TimeZone").await;
    assert_eq!(zone[0].values().next().unwrap(), "UTC");
    let mut alpha = alpha;
    let transaction = alpha.transaction().await.unwrap();
    let n: i64 = transaction
        .query_one("SELECT count(*) FROM alpha.spans", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    transaction.commit().await.unwrap();
    assert!(alpha.simple_query("").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_the_server_keeps_answering() {
    let (server, _keys) = analyst_server().await;

    let wrong = connect(&server, "alpha", Some("wrong"))
        .await
        .err()
        .unwrap();
    assert_eq!(state(&wrong), &SqlState::INVALID_PASSWORD);
    let none = connect(&server, "alpha", None).await.err().unwrap();
    assert!(format!("{none:?}").contains("password"), "{none:?}");
    let ingest_only = connect(&server, "alpha", Some("k-ingest"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        state(&ingest_only),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    );

    let alpha = connect(&server, "alpha", Some("k-alpha")).await.unwrap();
    for sql in [
        "SELECT count(*) FROM beta.spans",
        "SELECT count(*) FROM spanlake.beta.traces",
    ] {
        let e = alpha.query(sql, &[]).await.err().unwrap();
        assert_eq!(state(&e), &SqlState::INSUFFICIENT_PRIVILEGE, "{sql}");
        assert!(message(&e).contains("may not read workspace beta"), "{e:?}");
        let e = alpha.simple_query(sql).await.err().unwrap();
        assert_eq!(state(&e), &SqlState::INSUFFICIENT_PRIVILEGE, "{sql}");
    }
    for sql in [
        "CREATE TABLE t (a INT)",
        "INSERT INTO spans (name) VALUES ('x')",
        "COPY (SELECT 1) TO '/tmp/spanlake-pg-copy.csv'",
        "DROP TABLE spans",
    ] {
        let e = alpha.simple_query(sql).await.err().unwrap();
        assert_eq!(
            state(&e),
            &SqlState::READ_ONLY_SQL_TRANSACTION,
            "{sql}: {e:?}"
        );
    }
    let e = alpha.query("SELECT 1; SELECT 2", &[]).await.err().unwrap();
    assert_eq!(state(&e), &SqlState::SYNTAX_ERROR);
    let e = alpha.simple_query("SELEC 1").await.err().unwrap();
    assert_eq!(state(&e), &SqlState::SYNTAX_ERROR);

    // Over the memory pool: a clean error, and the next query is answered.
    let e = alpha.simple_query(&eightfold_chain()).await.err().unwrap();
    assert_eq!(state(&e), &SqlState::OUT_OF_MEMORY);
    assert!(message(&e).contains("memory limit"), "{e:?}");
    assert_eq!(span_count(&alpha).await, 3);
    // The other key reads its own workspace on its own connection.
    let beta = connect(&server, "beta", Some("k-beta")).await.unwrap();
    let rows = simple_rows(&beta, "SELECT count(*) AS n FROM spans").await;
    assert_eq!(rows[0]["n"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_abandoned_queries_end() {
    // Open access: no password is asked.
    let server = TestServer::start_with(|c| {
        c.query.query_timeout = std::time::Duration::from_secs(600);
    })
    .await;
    ingest_spans(&server, 2000, 0x62).await;
    // 8·10⁹ rows to count: minutes of work.
    let long = "SELECT count(*) FROM spans a, spans b, spans c";
    let client = connect(&server, "default", None).await.unwrap();
    let cancel = client.cancel_token();
    let running = tokio::spawn(async move {
        let answer = client.query(long, &[]).await;
        (client, answer)
    });
    wait_for_running(&server).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (client, answer) = running.await.unwrap();
    let e = answer.expect_err("the query is cancelled");
    assert_eq!(state(&e), &SqlState::QUERY_CANCELED);
    wait_for_no_query(server.http).await;
    assert_eq!(span_count(&client).await, 2000);

    // The extended protocol streams rows too (no gathering of 8·10⁹ rows before the
    // first): the first row arrives, then a cancel request ends the query.
    let wide = "SELECT a.span_id, b.span_id, c.span_id FROM spans a, spans b, spans c";
    let rows = client.query_raw(wide, Vec::<String>::new()).await.unwrap();
    let mut rows = std::pin::pin!(rows);
    let first = futures::StreamExt::next(&mut rows).await.unwrap().unwrap();
    assert_eq!(first.len(), 3);
    cancel.cancel_query(NoTls).await.unwrap();
    let mut ended = None;
    while let Some(row) = futures::StreamExt::next(&mut rows).await {
        if let Err(e) = row {
            ended = Some(e);
            break;
        }
    }
    let e = ended.expect("the cancel ends the rows with an error");
    assert_eq!(state(&e), &SqlState::QUERY_CANCELED);
    wait_for_no_query(server.http).await;

    // A client that closes its connection while its query computes (no row written yet)
    // ends it too: politely (the driver sends Terminate first, as drivers do on close) or
    // not (the socket just closes).
    for polite in [true, false] {
        let (gone, socket) = connect_with_task(&server, "default", None).await.unwrap();
        let abandoned = tokio::spawn(async move { gone.simple_query(long).await });
        wait_for_running(&server).await;
        if !polite {
            socket.abort();
        }
        // Dropping the client makes its connection send Terminate and close.
        abandoned.abort();
        wait_for_no_query(server.http).await;
    }
}

async fn wait_for_running(server: &TestServer) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while metric(server.http, "spanlake_queries_running").await != Some(1) {
        assert!(std::time::Instant::now() < deadline, "the query never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `psql` with `args` and `key` as the password, or `None` where psql is not installed.
async fn psql(conninfo: String, key: &str, args: &[&str]) -> Option<Output> {
    let (key, args): (String, Vec<String>) =
        (key.into(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .env("PGPASSWORD", key)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo])
            .args(args)
            .output()
            .ok()
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> (bool, String, String) {
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_lists_describes_and_queries() {
    let (server, _keys) = analyst_server().await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=analyst dbname=alpha sslmode=disable",
        server.pg.port()
    );
    let Some(out) = psql(conninfo.clone(), "k-alpha", &["-c", r"\dt"]).await else {
        eprintln!("psql is not installed: the psql test is skipped");
        return;
    };
    let (ok, stdout, stderr) = text(&out);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "alpha|spans|table|spanlake");
    let run = async |args: &[&str]| text(&psql(conninfo.clone(), "k-alpha", args).await.unwrap());

    let (ok, stdout, stderr) = run(&["-c", r"\d"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "alpha|spans|table|spanlake\nalpha|traces|view|spanlake"
    );
    let (ok, stdout, stderr) = run(&["-c", r"\dn"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "alpha|spanlake");
    let (ok, stdout, stderr) = run(&["-c", r"\d spans"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("trace_id|text||not null|"), "{stdout}");
    assert!(
        stdout.contains("start_time|timestamp with time zone|"),
        "{stdout}"
    );
    assert!(stdout.contains("attributes|jsonb|"), "{stdout}");
    let (ok, stdout, stderr) = run(&["-c", r"\d+ traces"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("id|text||not null|"), "{stdout}");
    assert!(
        stdout.contains("started_at|timestamp with time zone|"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run(&[
        "-c",
        "SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "cart|1\ncheckout|2");
    // Several statements in one query, answered in order.
    let (ok, stdout, stderr) = run(&["-c", "SELECT 1 AS a; SELECT 'two' AS b"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "1\ntwo");

    let (ok, _, stderr) = run(&["-c", "SELECT count(*) FROM beta.spans"]).await;
    assert!(
        !ok && stderr.contains("may not read workspace beta"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["-c", "COPY (SELECT 1) TO STDOUT"]).await;
    assert!(!ok && stderr.contains("not allowed"), "{stderr}");
    let wrong = text(
        &psql(conninfo.clone(), "wrong", &["-c", "SELECT 1"])
            .await
            .unwrap(),
    );
    assert!(
        !wrong.0 && wrong.2.contains("password authentication failed"),
        "{}",
        wrong.2
    );
    // Without TLS configured, a client requiring it is told so.
    let required = conninfo.replace("sslmode=disable", "sslmode=require");
    let (ok, _, stderr) = text(
        &psql(required, "k-alpha", &["-c", "SELECT 1"])
            .await
            .unwrap(),
    );
    assert!(!ok && stderr.contains("SSL"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_carries_the_password() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pg-tls");
    let server = TestServer::start_with(|c| {
        c.pg_tls_cert = Some(fixtures.join("cert.pem"));
        c.pg_tls_key = Some(fixtures.join("key.pem"));
    })
    .await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=analyst dbname=default sslmode=require",
        server.pg.port()
    );
    let Some(out) = psql(conninfo, "", &["-c", r"\conninfo", "-c", "SELECT 40 + 2"]).await else {
        eprintln!("psql is not installed: the TLS test is skipped");
        return;
    };
    let (ok, stdout, stderr) = text(&out);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("SSL connection (protocol: TLS"), "{stdout}");
    assert!(stdout.trim_end().ends_with("42"), "{stdout}");
    // Clients that do not ask for TLS still connect.
    let plain = connect(&server, "default", None).await.unwrap();
    assert_eq!(simple_rows(&plain, "SELECT 1 AS one").await[0]["one"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_answers_nothing_until_it_ends() {
    let (server, _keys) = analyst_server().await;
    let mut alpha = connect(&server, "alpha", Some("k-alpha")).await.unwrap();
    for end in ["ROLLBACK", "COMMIT"] {
        alpha.batch_execute("BEGIN").await.unwrap();
        let e = alpha
            .simple_query("SELECT count(*) FROM beta.spans")
            .await
            .unwrap_err();
        assert_eq!(state(&e), &SqlState::INSUFFICIENT_PRIVILEGE);
        // As in PostgreSQL: queries, catalog answers and cursors are refused over both
        // protocols until the transaction ends.
        for sql in [
            "SELECT count(*) FROM spans",
            "SELECT relname FROM pg_catalog.pg_class",
            "SHOW search_path",
            "DECLARE c CURSOR FOR SELECT 1",
        ] {
            let e = alpha.simple_query(sql).await.unwrap_err();
            assert_eq!(state(&e), &SqlState::IN_FAILED_SQL_TRANSACTION, "{sql}");
            assert!(message(&e).contains("transaction is aborted"), "{e:?}");
            let e = alpha.query(sql, &[]).await.unwrap_err();
            assert_eq!(state(&e), &SqlState::IN_FAILED_SQL_TRANSACTION, "{sql}");
        }
        alpha.batch_execute(end).await.unwrap();
        // Ended, and queries are answered again.
        assert_no_transaction(&alpha).await;
        assert_eq!(span_count(&alpha).await, 3);
    }
    // The extended protocol: statements prepared before the failure are refused when they
    // run, a portal left suspended is not resumed, and a prepared ROLLBACK ends it.
    let select = alpha
        .prepare("SELECT name FROM spans ORDER BY name")
        .await
        .unwrap();
    let rollback = alpha.prepare("ROLLBACK").await.unwrap();
    let transaction = alpha.transaction().await.unwrap();
    let portal = transaction.bind(&select, &[]).await.unwrap();
    let first = transaction.query_portal(&portal, 1).await.unwrap();
    assert_eq!(first[0].get::<_, String>(0), "cart");
    let e = transaction
        .query("SELECT count(*) FROM beta.spans", &[])
        .await
        .unwrap_err();
    assert_eq!(state(&e), &SqlState::INSUFFICIENT_PRIVILEGE);
    let e = transaction.query(&select, &[]).await.unwrap_err();
    assert_eq!(state(&e), &SqlState::IN_FAILED_SQL_TRANSACTION);
    let e = transaction.query_portal(&portal, 1).await.unwrap_err();
    assert_eq!(state(&e), &SqlState::IN_FAILED_SQL_TRANSACTION);
    transaction.execute(&rollback, &[]).await.unwrap();
    assert_no_transaction(&transaction).await;
    // Savepoints are refused for what they are.
    let e = transaction.simple_query("SAVEPOINT s").await.unwrap_err();
    assert_eq!(state(&e), &SqlState::FEATURE_NOT_SUPPORTED);
    drop(transaction);
    let rows = alpha.query(&select, &[]).await.unwrap();
    assert_eq!(rows.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_cursors_page_through_an_answer() {
    let (server, _keys) = analyst_server().await;
    let mut alpha = connect(&server, "alpha", Some("k-alpha")).await.unwrap();
    // The simple protocol, as psql and psycopg's FETCH send it.
    let names = |messages: Vec<SimpleQueryMessage>| -> Vec<String> {
        messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_string()),
                _ => None,
            })
            .collect()
    };
    alpha
        .batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT name FROM spans ORDER BY name")
        .await
        .unwrap();
    let first = names(alpha.simple_query("FETCH FORWARD 2 FROM c").await.unwrap());
    assert_eq!(first, ["cart", "checkout"]);
    let rest = names(alpha.simple_query("FETCH ALL FROM c").await.unwrap());
    assert_eq!(rest, ["checkout"]);
    assert!(names(alpha.simple_query("FETCH 5 FROM c").await.unwrap()).is_empty());
    alpha.batch_execute("CLOSE c; COMMIT").await.unwrap();
    let e = alpha.simple_query("FETCH 1 FROM c").await.unwrap_err();
    assert_eq!(state(&e), &SqlState::INVALID_CURSOR_NAME, "{e:?}");

    // The extended protocol, with a parameter bound into the cursor's query (as psycopg's
    // named cursors declare it), fetched in binary.
    let transaction = alpha.transaction().await.unwrap();
    transaction
        .execute(
            "DECLARE d CURSOR FOR SELECT name, duration_ns FROM spans WHERE name = $1",
            &[&"checkout"],
        )
        .await
        .unwrap();
    let rows = transaction.query("FETCH 10 FROM d", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == "checkout"));
    // A fetch left suspended half way (a portal with a row limit) does not hold the
    // cursor: the next FETCH goes on from where it stopped.
    transaction
        .execute(
            "DECLARE f CURSOR FOR SELECT name FROM spans ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let all = transaction.bind("FETCH ALL FROM f", &[]).await.unwrap();
    let first = transaction.query_portal(&all, 1).await.unwrap();
    assert_eq!(first[0].get::<_, String>(0), "cart");
    let next = transaction.query("FETCH 1 FROM f", &[]).await.unwrap();
    assert_eq!(next[0].get::<_, String>(0), "checkout");
    // A cursor over another key's workspace is refused like any query.
    let e = transaction
        .execute("DECLARE e CURSOR FOR SELECT * FROM beta.spans", &[])
        .await
        .unwrap_err();
    assert_eq!(state(&e), &SqlState::INSUFFICIENT_PRIVILEGE);
    drop(transaction);

    // Outside a transaction only a cursor WITH HOLD may be declared; the end of a
    // transaction closes the others, as in PostgreSQL.
    let e = alpha
        .simple_query("DECLARE g CURSOR FOR SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(state(&e), &SqlState::NO_ACTIVE_SQL_TRANSACTION, "{e:?}");
    alpha
        .batch_execute(
            "BEGIN; DECLARE h CURSOR FOR SELECT 1; \
             DECLARE held CURSOR WITH HOLD FOR SELECT 2 AS two; COMMIT",
        )
        .await
        .unwrap();
    let e = alpha.simple_query("FETCH 1 FROM h").await.unwrap_err();
    assert_eq!(state(&e), &SqlState::INVALID_CURSOR_NAME);
    assert_eq!(
        names(alpha.simple_query("FETCH 1 FROM held").await.unwrap()),
        ["2"]
    );
    let e = alpha
        .simple_query("FETCH BACKWARD 1 FROM held")
        .await
        .unwrap_err();
    assert_eq!(state(&e), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_timeout_ends_with_an_error_not_a_short_answer() {
    let server = TestServer::start_with(|c| {
        c.query.query_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    ingest_spans(&server, 2000, 0x63).await;
    let mut client = connect(&server, "default", None).await.unwrap();
    // A cursor fetching one row, then waiting past the query timeout before the next
    // fetch: the answer must end in an error, never look complete.
    let transaction = client.transaction().await.unwrap();
    let portal = transaction
        .bind("SELECT a.span_id, b.span_id FROM spans a, spans b", &[])
        .await
        .unwrap();
    let first = transaction.query_portal(&portal, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let e = match transaction.query_portal(&portal, 10_000_000).await {
        Ok(rows) => panic!(
            "an answer cut by its timeout looked complete: {} rows",
            rows.len()
        ),
        Err(e) => e,
    };
    assert_eq!(state(&e), &SqlState::QUERY_CANCELED, "{e:?}");
    assert!(message(&e).contains("timed out"), "{e:?}");
    drop(transaction);
    wait_for_no_query(server.http).await;
    assert_eq!(span_count(&client).await, 2000);
}
