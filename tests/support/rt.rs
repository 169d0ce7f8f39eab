//! The async runtime the tests run on, chosen by the crate's features: smol with
//! `runtime-smol`, async-std with `runtime-async-std`, Tokio otherwise. Every suite is
//! written once against these few functions.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Every test body is bounded: a hung test fails loudly instead of blocking CI.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// The runtime's name, for messages.
pub const NAME: &str = if cfg!(feature = "runtime-smol") {
    "smol"
} else if cfg!(feature = "runtime-async-std") {
    "async-std"
} else {
    "tokio"
};

/// The stack of the thread that polls a test body.
///
/// In debug builds the poll function of a long async block reserves a stack slot for every
/// temporary future in it, with no reuse: the restart test's body takes a 0.95 MB frame, so
/// on a test thread's default 2 MiB stack it overflowed once the runtime's own frames were
/// added. (The body itself is boxed; this is the frame of its `poll`.)
const TEST_STACK: usize = 16 << 20;

/// Runs a test body to completion on the selected runtime, failing it after [`TEST_LIMIT`].
///
/// The body runs on a thread of its own with a [`TEST_STACK`] stack; its panic is the test's.
pub fn run<F: Future<Output = ()> + Send + 'static>(test: F) {
    let test = Box::pin(test);
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    let body = std::thread::Builder::new()
        .name(name)
        .stack_size(TEST_STACK)
        .spawn(move || {
            block_on(async move {
                if timeout(TEST_LIMIT, test).await.is_none() {
                    panic!("test did not finish within {TEST_LIMIT:?} on {NAME}");
                }
            })
        })
        .expect("start the test body's thread");
    if let Err(panic) = body.join() {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(feature = "runtime-smol")]
fn block_on<F: Future<Output = ()> + Send + 'static>(f: F) {
    smol::block_on(f)
}

#[cfg(all(feature = "runtime-async-std", not(feature = "runtime-smol")))]
fn block_on<F: Future<Output = ()> + Send + 'static>(f: F) {
    async_std::task::block_on(f)
}

#[cfg(not(any(feature = "runtime-smol", feature = "runtime-async-std")))]
fn block_on<F: Future<Output = ()> + Send + 'static>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start a Tokio runtime")
        .block_on(f)
}

/// Sleeps on the selected runtime's timer.
pub async fn sleep(duration: Duration) {
    #[cfg(feature = "runtime-smol")]
    smol::Timer::after(duration).await;
    #[cfg(all(feature = "runtime-async-std", not(feature = "runtime-smol")))]
    async_std::task::sleep(duration).await;
    #[cfg(not(any(feature = "runtime-smol", feature = "runtime-async-std")))]
    tokio::time::sleep(duration).await;
}

/// `Some(output)` if `future` finishes within `limit`, else `None` (and it is dropped).
pub async fn timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}

/// A spawned task's result, as a future.
pub type Task<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Spawns `future` as its own task on the selected runtime.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    #[cfg(feature = "runtime-smol")]
    return Box::pin(smol::spawn(future));
    #[cfg(all(feature = "runtime-async-std", not(feature = "runtime-smol")))]
    return Box::pin(async_std::task::spawn(future));
    #[cfg(not(any(feature = "runtime-smol", feature = "runtime-async-std")))]
    {
        let handle = tokio::spawn(future);
        Box::pin(async move { handle.await.expect("spawned test task panicked") })
    }
}
