//! Arrow Flight SQL with the `arrow-flight` client: handshake with a key, the catalog
//! calls, a GROUP BY and a parameterized prepared statement giving the rows of `POST …/sql`,
//! and every refusal (wrong key, another workspace, writes, a query over the memory pool)
//! with the server still answering after it.

use std::collections::BTreeMap;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use futures::TryStreamExt;
use prost::Message;
use std::sync::Arc;
use tonic::transport::Channel;

use crate::common::{
    TestServer, analyst_server, batch_rows, eightfold_chain, ingest_spans, metric, route_rows,
    wait_for_no_query,
};

async fn client(server: &TestServer) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.flight))
        .unwrap()
        .connect()
        .await
        .expect("connect to Flight SQL");
    FlightSqlServiceClient::new(channel)
}

/// A client that shook hands with `key` as its password.
async fn signed_in(server: &TestServer, key: &str) -> FlightSqlServiceClient<Channel> {
    let mut client = client(server).await;
    client.handshake("analyst", key).await.expect("handshake");
    client
}

async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
    let announced = info
        .clone()
        .try_decode_schema()
        .expect("a schema in the FlightInfo");
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("a ticket");
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    // ADBC refuses an answer whose schema differs from the announced one.
    for batch in &batches {
        assert_eq!(
            batch.schema().fields(),
            announced.fields(),
            "the streamed schema is the announced one"
        );
    }
    Ok(batches)
}

/// Rows as text by column name, the way the SQL route's JSON reads (`null` for a null).
fn rows(batches: &[RecordBatch]) -> Vec<BTreeMap<String, String>> {
    batches
        .iter()
        .flat_map(batch_rows)
        .map(|row| {
            row.into_iter()
                .map(|(k, v)| (k, v.unwrap_or_else(|| "null".into())))
                .collect()
        })
        .collect()
}

fn code(e: &arrow_flight::error::FlightError) -> tonic::Code {
    match e {
        arrow_flight::error::FlightError::Tonic(status) => status.code(),
        other => panic!("not a gRPC status: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_list_their_workspaces_and_query_them() {
    let (server, _keys) = analyst_server().await;
    let mut alpha = signed_in(&server, "k-alpha").await;

    let info = alpha.get_catalogs().await.unwrap();
    let catalogs = rows(&fetch(&mut alpha, info).await.unwrap());
    assert_eq!(catalogs.len(), 1);
    assert_eq!(catalogs[0]["catalog_name"], "spanlake");

    let info = alpha
        .get_db_schemas(CommandGetDbSchemas::default())
        .await
        .unwrap();
    let schemas = rows(&fetch(&mut alpha, info).await.unwrap());
    let names: Vec<&str> = schemas
        .iter()
        .map(|r| r["db_schema_name"].as_str())
        .collect();
    assert_eq!(names, ["alpha"], "a key sees only its workspaces");

    let info = alpha
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let tables = fetch(&mut alpha, info).await.unwrap();
    let listed = rows(&tables);
    let names: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|r| {
            (
                r["db_schema_name"].as_str(),
                r["table_name"].as_str(),
                r["table_type"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("alpha", "spans", "TABLE"), ("alpha", "traces", "VIEW")]
    );
    let schema_bytes = tables[0]
        .column_by_name("table_schema")
        .expect("schemas were asked for");
    let spans_schema = arrow_flight::IpcMessage(
        schema_bytes
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap()
            .value(0)
            .to_vec()
            .into(),
    );
    let spans_schema = Schema::try_from(spans_schema).unwrap();
    assert!(spans_schema.field_with_name("trace_id").is_ok());
    assert!(spans_schema.field_with_name("service_name").is_ok());

    let info = alpha.get_table_types().await.unwrap();
    let types = rows(&fetch(&mut alpha, info).await.unwrap());
    assert_eq!(types.len(), 2);

    let info = alpha
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
        ])
        .await
        .unwrap();
    let info = fetch(&mut alpha, info).await.unwrap();
    assert_eq!(info.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);

    let info = alpha
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    assert!(!fetch(&mut alpha, info).await.unwrap().is_empty());

    // A GROUP BY gives the rows of the SQL route; qualified names work too.
    let query = "SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name";
    let info = alpha.execute(query.to_string(), None).await.unwrap();
    let flight = rows(&fetch(&mut alpha, info).await.unwrap());
    assert_eq!(flight.len(), 2);
    assert_eq!(flight, route_rows(&server, "k-alpha", "alpha", query).await);
    let info = alpha
        .execute(
            "SELECT count(*) AS n FROM spanlake.alpha.spans".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut alpha, info).await.unwrap())[0]["n"], "3");
    // Every column (dictionaries, maps, lists) and a guarded `||` stream as announced.
    for query in [
        "SELECT * FROM spans",
        "SELECT * FROM traces",
        "SELECT name || '!' AS shout, service_name FROM spans",
    ] {
        let info = alpha.execute(query.into(), None).await.unwrap();
        let answer = fetch(&mut alpha, info).await.unwrap();
        assert!(!rows(&answer).is_empty(), "{query}");
    }
    // The catalog lists only the key's workspace.
    let info = alpha
        .execute(
            "SELECT DISTINCT table_schema FROM information_schema.tables \
             WHERE table_catalog = 'spanlake' ORDER BY 1"
                .into(),
            None,
        )
        .await
        .unwrap();
    let listed = rows(&fetch(&mut alpha, info).await.unwrap());
    let listed: Vec<&str> = listed.iter().map(|r| r["table_schema"].as_str()).collect();
    assert!(!listed.contains(&"beta"), "{listed:?}");
    assert!(listed.contains(&"alpha"), "{listed:?}");

    // A prepared statement with a parameter, bound as ADBC binds it (`?`, one row).
    let mut statement = alpha
        .prepare(
            "SELECT count(*) AS n FROM spans WHERE name = ?".into(),
            None,
        )
        .await
        .unwrap();
    for (name, expected) in [("checkout", "2"), ("cart", "1"), ("none", "0")] {
        let params = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("0", DataType::Utf8, false)])),
            vec![Arc::new(StringArray::from(vec![name]))],
        )
        .unwrap();
        statement.set_parameters(params).unwrap();
        let info = statement.execute().await.unwrap();
        let answer = rows(&fetch(&mut alpha, info).await.unwrap());
        assert_eq!(answer[0]["n"], expected, "{name}");
        let literal = format!("SELECT count(*) AS n FROM spans WHERE name = '{name}'");
        assert_eq!(
            answer,
            route_rows(&server, "k-alpha", "alpha", &literal).await
        );
    }
    statement.close().await.unwrap();
    // The documented query: a parameter compared with a dictionary column.
    let mut statement = alpha
        .prepare(
            "SELECT count(*) AS n FROM spans WHERE service_name = ?".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        statement.parameter_schema().unwrap().field(0).data_type(),
        &DataType::Utf8,
        "parameters are announced as plain types"
    );
    let service = route_rows(
        &server,
        "k-alpha",
        "alpha",
        "SELECT service_name FROM spans LIMIT 1",
    )
    .await[0]["service_name"]
        .clone();
    statement
        .set_parameters(
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("0", DataType::Utf8, false)])),
                vec![Arc::new(StringArray::from(vec![service.as_str()]))],
            )
            .unwrap(),
        )
        .unwrap();
    let info = statement.execute().await.unwrap();
    assert_eq!(rows(&fetch(&mut alpha, info).await.unwrap())[0]["n"], "3");
    // Placeholder numbers are the client's: a huge one sizes nothing.
    let err = alpha
        .prepare("SELECT $99999999999 AS x".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::InvalidArgument, "{err}");

    // The key as a bearer header, without a handshake, works the same.
    let mut bearer = client(&server).await;
    bearer.set_token("k-alpha".into());
    let info = bearer
        .execute("SELECT count(*) AS n FROM spans".into(), None)
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut bearer, info).await.unwrap())[0]["n"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_the_server_keeps_answering() {
    let (server, _keys) = analyst_server().await;

    // Wrong key, no key, a key without the read scope.
    let err = client(&server)
        .await
        .handshake("analyst", "nope")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown API key"), "{err}");
    let err = client(&server)
        .await
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::Unauthenticated, "{err}");
    let mut ingest_only = client(&server).await;
    ingest_only.set_token("k-ingest".into());
    let err = ingest_only
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::PermissionDenied, "{err}");

    let mut alpha = signed_in(&server, "k-alpha").await;
    // Another key's workspace: refused whether it is named with or without the catalog.
    for query in [
        "SELECT count(*) FROM beta.spans",
        "SELECT count(*) FROM spanlake.beta.spans",
        "SELECT * FROM spans JOIN beta.traces USING (trace_id)",
    ] {
        let err = alpha.execute(query.into(), None).await.unwrap_err();
        assert_eq!(code(&err), tonic::Code::PermissionDenied, "{query}: {err}");
        assert!(err.to_string().contains("workspace beta"), "{err}");
    }
    // Writes of every kind.
    for query in [
        "DROP TABLE spans",
        "INSERT INTO spans SELECT * FROM spans",
        "COPY (SELECT 1) TO '/tmp/spanlake-copy.csv'",
        "CREATE TABLE t AS SELECT 1",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = alpha.execute(query.into(), None).await.unwrap_err();
        assert_eq!(code(&err), tonic::Code::InvalidArgument, "{query}: {err}");
        assert!(err.to_string().contains("not allowed"), "{query}: {err}");
    }
    let err = alpha
        .execute_update("DELETE FROM spans".into(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert_eq!(code(&err), tonic::Code::Unimplemented, "{err}");
    // A ticket is no right: a valid ticket without a key is refused, and beta's query in a
    // ticket made by hand is refused for alpha's key.
    let info = alpha
        .execute("SELECT count(*) AS n FROM spans".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let err = client(&server).await.do_get(ticket).await.err();
    let err = err.expect("a ticket without a key is refused");
    assert_eq!(code(&err), tonic::Code::Unauthenticated, "{err}");
    let mut handle = b"S1".to_vec();
    let forged = "SELECT count(*) FROM beta.spans";
    handle.extend_from_slice(&(forged.len() as u32).to_le_bytes());
    handle.extend_from_slice(forged.as_bytes());
    let forged = arrow_flight::sql::TicketStatementQuery {
        statement_handle: handle.into(),
    };
    let ticket = arrow_flight::Ticket::new(
        arrow_flight::sql::ProstMessageExt::as_any(&forged).encode_to_vec(),
    );
    let err = match alpha.do_get(ticket).await {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(code(&err), tonic::Code::PermissionDenied, "{err}");
    // Over the memory pool (a value growing eightfold per subquery): a clean error, then
    // the next query is answered.
    let err = match alpha.execute(eightfold_chain(), None).await {
        Ok(info) => fetch(&mut alpha, info).await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(code(&err), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("memory limit"), "{err}");
    let info = alpha
        .execute("SELECT count(*) AS n FROM spans".into(), None)
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut alpha, info).await.unwrap())[0]["n"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_cancels_its_query() {
    // Open access (no keys): any client may read every workspace.
    let server = TestServer::start_with(|c| {
        c.query.query_timeout = std::time::Duration::from_secs(600);
    })
    .await;
    ingest_spans(&server, 2000, 0x61).await;
    let mut flight = client(&server).await;
    // 8·10⁹ rows: the client reads the first batch, then drops the stream.
    let info = flight
        .execute(
            "SELECT a.span_id, b.span_id, c.span_id FROM spans a, spans b, spans c".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = flight.do_get(ticket).await.unwrap();
    assert!(stream.try_next().await.unwrap().is_some());
    assert_eq!(
        metric(server.http, "spanlake_queries_running").await,
        Some(1)
    );
    drop(stream);
    wait_for_no_query(server.http).await;
    // And the server answers the next query.
    let info = flight
        .execute("SELECT count(*) AS n FROM spans".into(), None)
        .await
        .unwrap();
    assert_eq!(
        rows(&fetch(&mut flight, info).await.unwrap())[0]["n"],
        "2000"
    );
}
