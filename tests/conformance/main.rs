//! One behaviour suite, written once against `&dyn LockProvider`, run against every
//! provider: PostgreSQL (`PgPool`), the in-memory stand-in (`MemoryLocks`) and
//! `LockClient`, whose locks share a few sessions. If the
//! stand-in passes the same suite as the database, tests that swap it in are telling the
//! truth.
//!
//! The one home of what every `DistributedLock` must do; PostgreSQL-only behaviour is in
//! `tests/pg`. A binary of its own so `cargo test --test conformance` runs exactly the
//! backend-independent contract (see `tests/README.md`).

#[path = "../support/mod.rs"]
mod support;

mod backend;
mod differential;
mod loss;
mod queue;
mod suite;

/// For each `module::behaviour`, a test `postgres::behaviour`, `memory::behaviour` and
/// `client::behaviour` (a `LockClient`'s locks).
macro_rules! conformance {
    ($($module:ident :: $behaviour:ident),* $(,)?) => {
        mod postgres {
            $(
                #[test]
                fn $behaviour() {
                    crate::support::rt::run(async {
                        crate::$module::$behaviour(crate::backend::Backend::postgres().await).await
                    });
                }
            )*
        }
        mod memory {
            $(
                #[test]
                fn $behaviour() {
                    crate::support::rt::run(async {
                        crate::$module::$behaviour(crate::backend::Backend::memory()).await
                    });
                }
            )*
        }
        mod client {
            $(
                #[test]
                fn $behaviour() {
                    crate::support::rt::run(async {
                        crate::$module::$behaviour(crate::backend::Backend::client().await).await
                    });
                }
            )*
        }
    };
}

conformance!(
    suite::levels_stack_and_need_as_many_unlocks,
    suite::shared_holders_share_and_exclude_writers,
    suite::one_session_may_hold_both_modes,
    suite::unlock_without_a_level_is_not_held_and_changes_nothing,
    suite::closed_lock_refuses_every_operation_and_closes_twice,
    suite::close_frees_the_key_for_another_session,
    suite::drop_frees_the_key_for_another_session,
    suite::waiters_are_granted_in_arrival_order,
    suite::queued_writer_makes_shared_try_fail,
    suite::timed_wait_gives_up_within_bounds,
    suite::timed_wait_succeeds_when_released_inside_the_window,
    suite::zero_timeout_is_a_plain_try,
    suite::cancelled_wait_leaves_no_trace,
    suite::many_tasks_on_one_key_never_overlap,
    suite::is_held_reports_any_mode,
    suite::lost_resolves_at_once_without_levels_and_not_while_held,
    queue::holders_try_for_a_new_mode_fails_while_a_conflicting_request_waits,
    queue::exclusive_holders_shared_try_fails_while_an_exclusive_request_waits,
    queue::holders_wait_is_granted_at_once_ahead_of_a_waiter_it_blocks,
    queue::holders_wait_queues_ahead_of_a_waiter_it_blocks,
    queue::wait_that_closes_a_cycle_fails_at_once_with_deadlock,
    loss::each_unlock_pairing_with_a_lost_level_reports_lock_lost_then_not_held,
    loss::a_loss_takes_the_levels_of_both_modes,
    loss::is_held_lost_and_close_report_the_loss_until_every_level_is_accounted_for,
    loss::close_after_a_loss_reports_it_and_accounts_for_every_level,
    loss::a_pending_lost_resolves_when_the_levels_are_lost,
    loss::a_new_acquisition_after_a_loss_works_and_is_released_first,
    loss::a_lost_key_is_free_for_another_session_and_its_waiter,
    loss::a_pending_wait_of_a_lost_session_fails_with_lock_lost,
);
