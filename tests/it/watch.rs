//! PoolEvents.Watch: filters, snapshot then live, resume after a sequence,
//! the answer for a sequence too old, the lag signal for a slow subscriber,
//! and 1,000 concurrent subscribers each getting every event in order.

use std::time::Duration;

use poolplane::events::EventDetail;
use poolplane::proto::{event, EventKind, UpdatePoolRequest, WatchRequest};
use tonic::Code;

use crate::support::{config_yaml_with, meta, watch, PoolSpec, TestServer};

/// No health checks (their events would interleave) and small buffers.
fn quiet(replay: u32, subscriber: u32) -> String {
    format!(
        "  health_monitoring:\n    enabled: false\n  server:\n    grpc_listen: 127.0.0.1:0\n    event_replay_buffer: {replay}\n    event_subscriber_buffer: {subscriber}\n"
    )
}

async fn touch(server: &TestServer, pool: &str) {
    server
        .admin()
        .await
        .update_pool(UpdatePoolRequest {
            name: pool.into(),
            idle_timeout_ms: Some(60_000),
            ..Default::default()
        })
        .await
        .expect("update");
}

async fn next(stream: &mut tonic::Streaming<poolplane::proto::Event>) -> poolplane::proto::Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event arrives")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pick_pools_and_kinds() {
    let pools = [PoolSpec::new("watch_a", 1), PoolSpec::new("watch_b", 1)];
    let server = TestServer::start(&config_yaml_with(&pools, &quiet(100, 100))).await;
    let mut stream = watch(
        &server,
        WatchRequest {
            pools: vec!["watch_a".into()],
            kinds: vec![EventKind::PoolUpdated as i32],
            ..Default::default()
        },
    )
    .await
    .expect("watch");
    touch(&server, "watch_b").await;
    touch(&server, "watch_a").await;
    let event = next(&mut stream).await;
    assert_eq!(
        (event.pool.as_str(), event.kind),
        ("watch_a", EventKind::PoolUpdated as i32)
    );
    assert!(event.sequence > 0 && event.time.is_some());

    let status = watch(
        &server,
        WatchRequest {
            kinds: vec![EventKind::Unspecified as i32],
            ..Default::default()
        },
    )
    .await
    .expect_err("unspecified kind");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_comes_first_then_live_events_after_its_sequence() {
    let pools = [PoolSpec::new("snap_a", 1), PoolSpec::new("snap_b", 1)];
    let server = TestServer::start(&config_yaml_with(&pools, &quiet(100, 100))).await;
    let mut stream = watch(
        &server,
        WatchRequest {
            pools: vec!["snap_a".into()],
            snapshot: true,
            ..Default::default()
        },
    )
    .await
    .expect("watch");
    let first = next(&mut stream).await;
    assert_eq!(first.kind, EventKind::Snapshot as i32);
    let Some(event::Detail::Snapshot(pool)) = first.detail else {
        panic!("snapshot without a pool: {first:?}");
    };
    assert_eq!(pool.spec.expect("spec").name, "snap_a");
    assert!(pool.health.is_some());
    let end = next(&mut stream).await;
    let Some(event::Detail::SnapshotEnd(end)) = end.detail else {
        panic!("expected the end of the snapshot: {end:?}");
    };
    // Two PoolCreated events were published before the subscription.
    assert_eq!(end.sequence, 2);
    touch(&server, "snap_a").await;
    let live = next(&mut stream).await;
    assert_eq!(live.kind, EventKind::PoolUpdated as i32);
    assert_eq!(live.sequence, end.sequence + 1);

    let status = watch(
        &server,
        WatchRequest {
            snapshot: true,
            resume_after: Some(1),
            ..Default::default()
        },
    )
    .await
    .expect_err("snapshot and resume together");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_what_followed_and_refuses_what_is_gone() {
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("resume", 1)],
        &quiet(8, 100),
    ))
    .await;
    // Sequence 1 is PoolCreated; 2..=6 are five updates.
    for _ in 0..5 {
        touch(&server, "resume").await;
    }
    let mut stream = watch(
        &server,
        WatchRequest {
            resume_after: Some(3),
            ..Default::default()
        },
    )
    .await
    .expect("resumable");
    let replayed: Vec<u64> = [
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    ]
    .iter()
    .map(|e| e.sequence)
    .collect();
    assert_eq!(replayed, [4, 5, 6]);
    touch(&server, "resume").await;
    assert_eq!(
        next(&mut stream).await.sequence,
        7,
        "live events continue the replay"
    );

    // Ten more: the buffer of 8 now holds 10..=17.
    for _ in 0..10 {
        touch(&server, "resume").await;
    }
    let status = watch(
        &server,
        WatchRequest {
            resume_after: Some(3),
            ..Default::default()
        },
    )
    .await
    .expect_err("too old");
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(
        meta(&status, "poolplane-oldest-sequence").as_deref(),
        Some("10")
    );
    assert!(
        status.message().contains("snapshot"),
        "{}",
        status.message()
    );
    let ok = watch(
        &server,
        WatchRequest {
            resume_after: Some(9),
            ..Default::default()
        },
    )
    .await;
    assert!(
        ok.is_ok(),
        "resuming right before the oldest buffered event works"
    );

    let status = watch(
        &server,
        WatchRequest {
            resume_after: Some(1000),
            ..Default::default()
        },
    )
    .await
    .expect_err("from the future");
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(
        meta(&status, "poolplane-latest-sequence").as_deref(),
        Some("17")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_what_it_lost_and_slows_nobody() {
    const EVENTS: u64 = 10_000;
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("lag", 1)],
        &quiet(100, 64),
    ))
    .await;
    let request = WatchRequest {
        kinds: vec![EventKind::PoolUpdated as i32],
        ..Default::default()
    };
    // A tiny HTTP/2 window: the server can send the slow subscriber only a
    // few events before it must wait for a read that never comes, so it
    // lags however fast this machine is.
    let slow_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .expect("connect");
    let mut slow = poolplane::proto::pool_events_client::PoolEventsClient::new(slow_channel)
        .watch(request.clone())
        .await
        .expect("watch")
        .into_inner();
    let mut fast = watch(&server, request).await.expect("watch");
    let first = server.app.events().last_sequence() + 1;
    let last = first + EVENTS - 1;

    // The fast subscriber reads as events come, in batches small enough for
    // its buffer; the slow one reads nothing until the end.
    let mut fast_seen = 0u64;
    for batch in 0..EVENTS / 50 {
        for _ in 0..50 {
            server.app.events().publish("lag", EventDetail::PoolUpdated);
        }
        let until = first + (batch + 1) * 50 - 1;
        loop {
            let event = next(&mut fast).await;
            assert_eq!(
                event.kind,
                EventKind::PoolUpdated as i32,
                "the fast subscriber never lags"
            );
            fast_seen += 1;
            if event.sequence == until {
                break;
            }
        }
    }
    assert_eq!(fast_seen, EVENTS);

    let mut received = 0u64;
    let mut lost = 0u64;
    let mut previous = 0u64;
    loop {
        let event = next(&mut slow).await;
        match event.detail {
            Some(event::Detail::Lagged(lagged)) => lost += lagged.lost,
            _ => {
                assert!(event.sequence > previous, "in order");
                previous = event.sequence;
                received += 1;
                if event.sequence == last {
                    break;
                }
            }
        }
    }
    assert!(lost > 0, "the slow subscriber was told it lagged");
    assert_eq!(
        received + lost,
        EVENTS,
        "every event is either received or counted as lost"
    );
    assert!(server.app.events().lagged_events() >= lost);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_get_every_event_in_order() {
    const SUBSCRIBERS: usize = 1000;
    const EVENTS: u64 = 50;
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("fanout", 1)],
        &quiet(100, 1024),
    ))
    .await;
    let request = WatchRequest {
        kinds: vec![EventKind::PoolUpdated as i32],
        ..Default::default()
    };
    // Spread over connections, as many clients would be.
    let mut channels = Vec::new();
    for _ in 0..20 {
        channels.push(server.channel().await);
    }
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let mut client =
            poolplane::proto::pool_events_client::PoolEventsClient::new(channels[i % 20].clone());
        streams.push(
            client
                .watch(request.clone())
                .await
                .expect("watch")
                .into_inner(),
        );
    }
    let first = server.app.events().last_sequence() + 1;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut sequences = Vec::with_capacity(EVENTS as usize);
                while (sequences.len() as u64) < EVENTS {
                    match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                        Ok(Ok(Some(event))) => sequences.push(event.sequence),
                        other => panic!("subscriber stopped early: {other:?}"),
                    }
                }
                sequences
            })
        })
        .collect();
    for _ in 0..EVENTS {
        server
            .app
            .events()
            .publish("fanout", EventDetail::PoolUpdated);
    }
    let expected: Vec<u64> = (first..first + EVENTS).collect();
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), expected);
    }
    server.stop().await;
}
