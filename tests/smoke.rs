mod support;
use support::rt;

#[test]
fn smoke() {
    rt::run(async {
        let pool = support::pool().await;
        let key = support::key("smoke");
        let mut lock = pglock::AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(lock.try_lock().await.unwrap());
        assert_eq!(support::holders(key).await.len(), 1);
        assert!(lock.is_held().await.unwrap());
        lock.unlock().await.unwrap();
        assert!(matches!(
            lock.unlock().await,
            Err(pglock::Error::NotHeld { .. })
        ));
        lock.close().await.unwrap();
        assert!(matches!(lock.lock().await, Err(pglock::Error::Closed)));
    });
}
