use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::SystemTime;
use switchyard::metrics::CONTENT_TYPE;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use switchyard::metrics::parse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::driver;
use crate::health::Observed;

fn observed(health: pb::Health) -> Observed {
    Observed {
        health,
        reason: "test".into(),
        at: SystemTime::now(),
    }
}

#[test]
fn every_family_is_written_and_parses() {
    let stats = Arc::new(Stats::default());
    stats.acks.store(3, Ordering::Relaxed);
    let config = NodeConfig {
        revision: 7,
        ..NodeConfig::default()
    };
    let (_config, config) = watch::channel(Arc::new(config));
    let results = Results::from([
        ("web-1".to_string(), observed(pb::Health::Unhealthy)),
        ("web-2".to_string(), observed(pb::Health::Healthy)),
    ]);
    let (_health, health) = watch::channel(results);
    let sources = Sources {
        control_planes: vec!["http://a:7700".to_string(), "http://b:7700".to_string()].into(),
        stats,
        config,
        health,
        checks: Arc::default(),
        driver: Some(Arc::new(
            driver::Builtin::new(switchyard_proxy::Builtin::new(), Default::default()).0,
        )),
        dns: None,
    };
    let text = sources.render();
    let s = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(s.get("switchyard_agent_applied_revision", &[]), Some(7.0));
    assert_eq!(s.get("switchyard_agent_sync_acks_total", &[]), Some(3.0));
    for cp in ["http://a:7700", "http://b:7700"] {
        assert_eq!(
            s.get("switchyard_agent_connected", &[("control_plane", cp)]),
            Some(0.0),
            "not connected to {cp}"
        );
    }
    assert_eq!(
        s.get(
            "switchyard_agent_endpoint_healthy",
            &[("endpoint", "web-1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        s.get(
            "switchyard_agent_endpoint_healthy",
            &[("endpoint", "web-2")]
        ),
        Some(1.0)
    );
    for (family, kind) in [
        ("switchyard_agent_sync_connects_total", Type::Counter),
        ("switchyard_agent_sync_failures_total", Type::Counter),
        ("switchyard_agent_sync_snapshots_total", Type::Counter),
        ("switchyard_agent_sync_deltas_total", Type::Counter),
        ("switchyard_agent_sync_nacks_total", Type::Counter),
        ("switchyard_agent_sync_resyncs_total", Type::Counter),
        ("switchyard_agent_health_checks_total", Type::Counter),
        (
            "switchyard_agent_health_check_failures_total",
            Type::Counter,
        ),
        ("switchyard_agent_proxy_requests_total", Type::Counter),
        ("switchyard_agent_proxy_errors_total", Type::Counter),
        (
            "switchyard_agent_proxy_request_duration_seconds",
            Type::Histogram,
        ),
        (
            "switchyard_agent_proxy_upstream_requests_total",
            Type::Counter,
        ),
        (
            "switchyard_agent_proxy_upstream_failures_total",
            Type::Counter,
        ),
        ("switchyard_agent_proxy_ejections_total", Type::Counter),
        ("switchyard_agent_proxy_retries_total", Type::Counter),
        ("switchyard_agent_proxy_circuit_open_total", Type::Counter),
        ("switchyard_agent_proxy_upstream_connections", Type::Gauge),
    ] {
        assert_eq!(s.families.get(family), Some(&kind), "{family}");
    }
}

#[tokio::test]
async fn only_get_metrics_and_the_probes_are_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let readiness = {
        let ready = ready.clone();
        move || match ready.load(Ordering::Relaxed) {
            true => Ok(()),
            false => Err("nothing applied yet".to_owned()),
        }
    };
    let server = tokio::spawn(serve(
        listener,
        || "up 1\n".to_string(),
        readiness,
        stop.clone(),
    ));
    let ask = |request: &'static str| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = ask("GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(CONTENT_TYPE), "{answer}");
    assert!(answer.ends_with("\r\n\r\nup 1\n"), "{answer}");
    let answer = ask("GET /other HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = ask("DELETE /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let answer = ask("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = ask("GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.ends_with("not ready: nothing applied yet\n"),
        "{answer}"
    );
    ready.store(true, Ordering::Relaxed);
    let answer = ask("GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A scraper's idle keep-alive connection does not hold up shutdown.
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap();
}

#[test]
fn metrics_beyond_loopback_need_the_insecure_flag() {
    let any: SocketAddr = "0.0.0.0:9701".parse().unwrap();
    let node: SocketAddr = "10.1.2.3:9701".parse().unwrap();
    for addr in [any, node] {
        let e = check_exposure(Some(addr), false).unwrap_err();
        assert!(e.contains("--insecure-metrics"), "{e}");
        assert!(e.contains(&addr.to_string()), "{e}");
        assert_eq!(check_exposure(Some(addr), true), Ok(()));
    }
    for loopback in ["127.0.0.1:9701", "[::1]:9701"] {
        assert_eq!(
            check_exposure(Some(loopback.parse().unwrap()), false),
            Ok(())
        );
    }
    assert_eq!(check_exposure(None, false), Ok(()), "metrics off");
}
