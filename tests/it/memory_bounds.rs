//! The server's memory is bounded by its limits, whatever the results: the
//! real binary, in a process of its own, measured from /proc.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poolplane::proto::execute_stream_response::Part;
use poolplane::proto::value::Kind;
use tonic::Code;

use crate::support::{
    config_yaml, exec, meta, nothing_left_running, resident_bytes, PoolSpec, ServedBinary,
};

const MIB: u64 = 1024 * 1024;

/// 2 GiB of rows streamed to a reader that reads slowly: every row
/// arrives, in order, and the server's resident memory stays within
/// 64 MiB of what it was idle (flow control holds the rest in PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_streamed_to_a_slow_reader_stay_within_64_mib_of_idle() {
    let _turn = crate::support::machine_to_myself().await;
    let pool = "bin_stream";
    let server = ServedBinary::start(&config_yaml(&[PoolSpec::new(pool, 2)]), &[]).await;
    let mut client = server.query().await;
    client
        .execute(exec(pool, "SELECT 1", vec![]))
        .await
        .expect("warm up");
    let idle = server.resident_bytes().expect("rss");

    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let (peak, pid) = (Arc::clone(&peak), server.pid());
        tokio::spawn(async move {
            while let Some(resident) = resident_bytes(pid) {
                peak.fetch_max(resident, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let rows: i64 = 2048;
    let sql = format!(
        "SELECT i::int8, repeat(chr(65 + i % 26), 1048576) FROM generate_series(1, {rows}) i"
    );
    let mut parts = client
        .execute_stream(exec(pool, &sql, vec![]))
        .await
        .expect("stream")
        .into_inner();
    let mut next_row = 1;
    let mut end = None;
    while let Some(message) = parts.message().await.expect("no error") {
        match message.part.expect("a part") {
            Part::Header(_) => {}
            Part::Rows(chunk) => {
                for row in chunk.rows {
                    assert_eq!(row.values[0].kind, Some(Kind::IntValue(next_row)));
                    let Some(Kind::TextValue(text)) = &row.values[1].kind else {
                        panic!("text expected");
                    };
                    assert_eq!(text.len(), 1_048_576);
                    assert_eq!(text.as_bytes()[0], b'A' + (next_row % 26) as u8);
                    next_row += 1;
                }
                // The slow part: for the first 100 MiB, a reader far slower
                // than the server (which could buffer some 300 MiB meanwhile
                // if nothing held it back).
                if next_row <= 100 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            Part::End(e) => end = Some(e),
        }
    }
    sampler.abort();
    assert_eq!(next_row, rows + 1, "every row arrived");
    assert_eq!(end.expect("an end").rows_affected, rows as u64);
    let grew = peak.load(Ordering::Relaxed).saturating_sub(idle);
    assert!(
        grew < 64 * MIB,
        "resident memory grew by {} MiB over an idle {} MiB",
        grew / MIB,
        idle / MIB
    );
}

/// Four concurrent 600 MB results, of many rows or of one value, under a
/// 2 GiB address-space limit: the server stays up, each call is refused at
/// server.max_result_bytes with RESOURCE_EXHAUSTED, and the backends are
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_600_mb_results_under_a_2_gib_limit_are_refused_not_fatal() {
    let _turn = crate::support::machine_to_myself().await;
    let pool = "bin_limited";
    let mut server = ServedBinary::start(
        &config_yaml(&[PoolSpec::new(pool, 4)]),
        &["prlimit", "--as=2147483648", "--"],
    )
    .await;
    // 600 rows of 1 MB each, then one value of 600 MB (which PostgreSQL
    // would send as one message).
    for sql in [
        "SELECT repeat('x', 1000000) FROM generate_series(1, 600)",
        "SELECT repeat('x', 600000000)",
    ] {
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let address = server.grpc.clone();
                tokio::spawn(async move {
                    let mut client = poolplane::proto::query_client::QueryClient::connect(address)
                        .await
                        .expect("connect");
                    client.execute(exec(pool, sql, vec![])).await
                })
            })
            .collect();
        for call in calls {
            let status = call.await.expect("join").expect_err("too large");
            assert_eq!(status.code(), Code::ResourceExhausted, "{sql}: {status:?}");
            assert!(
                meta(&status, "poolplane-byte-limit").is_some(),
                "{status:?}"
            );
        }
    }
    assert!(server.running(), "the server survived");
    nothing_left_running(pool).await;
    let mut client = server.query().await;
    client
        .execute(exec(pool, "SELECT 1", vec![]))
        .await
        .expect("still serving");
    assert_eq!(server.terminate().await.code(), Some(0));
}

/// Streams whose readers stop, with rows that weigh little on the wire but
/// cost much in memory (arrays of NULLs: 4 bytes each from PostgreSQL):
/// rows are limited by what they cost, so eight stalled streams hold a
/// bounded amount, and a row of 500,000 NULLs is refused (found by a red
/// team: it took 160 MB per stalled stream, and 22 of them killed the
/// server under a 2 GiB limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_of_cheap_to_send_rows_stay_bounded() {
    let _turn = crate::support::machine_to_myself().await;
    let pool = "bin_stalled";
    let streams = 8;
    let server = ServedBinary::start(&config_yaml(&[PoolSpec::new(pool, streams)]), &[]).await;
    let mut client = server.query().await;
    client
        .execute(exec(pool, "SELECT 1", vec![]))
        .await
        .expect("warm up");
    let idle = server.resident_bytes().expect("rss");

    let mut refused = client
        .execute_stream(exec(
            pool,
            "SELECT g, array_fill(null::int4, array[500000]) FROM generate_series(1, 3) g",
            vec![],
        ))
        .await
        .expect("stream")
        .into_inner();
    let status = loop {
        match refused.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a row of 500,000 NULLs was sent"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let mut stalled = Vec::new();
    for _ in 0..streams {
        let mut parts = server
            .query()
            .await
            .execute_stream(exec(
                pool,
                "SELECT g, array_fill(null::int4, array[35000]) FROM generate_series(1, 1000) g",
                vec![],
            ))
            .await
            .expect("stream")
            .into_inner();
        parts.message().await.expect("a part").expect("header");
        parts.message().await.expect("a part").expect("rows");
        stalled.push(parts);
    }
    let admin = crate::support::cluster().admin().await;
    crate::support::eventually(
        "every backend waits for poolplane to read",
        Duration::from_secs(20),
        || {
            let admin = &admin;
            async move {
                admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                         AND wait_event = 'ClientWrite'",
                        &[&format!("poolplane/{pool}")],
                    )
                    .await
                    .map(|row| row.get::<_, i64>(0))
                    .unwrap_or(0)
                    == i64::from(streams)
            }
        },
    )
    .await;
    // The README's bound: about five times server.max_result_bytes (4 MB)
    // per stream; 44 MiB for all eight were measured here.
    let grew = server.resident_bytes().expect("rss").saturating_sub(idle);
    let bound = u64::from(streams) * 5 * 4_000_000;
    assert!(
        grew < bound,
        "{streams} stalled streams grew resident memory by {} MiB (bound {} MiB)",
        grew / MIB,
        bound / MIB
    );
    drop(stalled);
}
