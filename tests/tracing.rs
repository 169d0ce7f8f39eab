//! The `tracing` feature: what pglock emits, captured as text from a real run against
//! PostgreSQL (`cargo test --features tracing --test tracing`).
//!
//! A binary of its own, not a module of `tests/pg`: it needs the `tracing` feature, which
//! CI turns on for this suite only (`cargo test --features tracing --test tracing`); as a
//! module it would make that step compile and link the whole PostgreSQL suite again.
#![cfg(feature = "tracing")]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use pglock::{AdvisoryLock, Error};
use sqlx::Connection;
use support::rt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Everything the subscriber writes, as one string.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("the capture")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the capture").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Runs `test` with a subscriber that captures pglock's spans (when they close, with
/// their fields) and events; returns the text.
fn capture(test: impl std::future::Future<Output = ()> + Send + 'static) -> String {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .finish();
    // The subscriber goes with the future: `rt::run` polls it on a thread of its own.
    rt::run(tracing::instrument::WithSubscriber::with_subscriber(
        test, subscriber,
    ));
    captured.text()
}

#[test]
fn an_acquisition_is_a_span_with_key_mode_wait_and_outcome_and_a_release_an_event() {
    let key = support::key("tracing/acquire");
    let text = capture(async move {
        let pool = support::pool_with(2).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(lock.try_lock().await.unwrap());
        lock.unlock().await.unwrap();
        lock.close().await.unwrap();
    });
    let span = text
        .lines()
        .find(|line| line.contains("pglock.acquire") && line.contains("close"))
        .unwrap_or_else(|| panic!("no closed pglock.acquire span in:\n{text}"));
    for field in [
        format!("key={key}"),
        "mode=exclusive".to_owned(),
        "kind=\"try\"".to_owned(),
        "outcome=\"acquired\"".to_owned(),
        "waited_ms=".to_owned(),
    ] {
        assert!(span.contains(&field), "{field} missing from {span}");
    }
    assert!(
        text.lines()
            .any(|line| line.contains("pglock.released") && line.contains(&format!("key={key}"))),
        "no pglock.released event in:\n{text}"
    );
}

#[test]
fn a_lost_session_emits_the_loss_with_its_reason_and_the_session_end() {
    let key = support::key("tracing/lost");
    let text = capture(async move {
        let pool = support::pool_with(2).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        lock.lock().await.unwrap();
        let pid = support::holders(key).await[0];
        let mut admin = support::connect().await;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let held = lock.is_held().await;
        assert!(matches!(held, Err(Error::LockLost { .. })), "{held:?}");
        let _ = lock.close().await;
    });
    assert!(
        text.lines().any(|line| line.contains("pglock.lost")
            && line.contains(&format!("key={key}"))
            && line.contains("reason=")
            && line.contains("WARN")),
        "no pglock.lost warning in:\n{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.contains("pglock.session_ended") && line.contains("reason=")),
        "no pglock.session_ended event in:\n{text}"
    );
}
