//! One behaviour suite, written once against `&dyn LockProvider`, run against every
//! provider: PostgreSQL (`PgPool`) and the in-memory stand-in (`MemoryLocks`). If the
//! stand-in passes the same suite as the database, tests that swap it in are telling the
//! truth.

#[path = "../support/mod.rs"]
mod support;

mod backend;
mod suite;

macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        mod postgres {
            $(
                #[test]
                fn $behaviour() {
                    crate::support::rt::run(async {
                        crate::suite::$behaviour(crate::backend::Backend::postgres().await).await
                    });
                }
            )*
        }
        mod memory {
            $(
                #[test]
                fn $behaviour() {
                    crate::support::rt::run(async {
                        crate::suite::$behaviour(crate::backend::Backend::memory()).await
                    });
                }
            )*
        }
    };
}

conformance!(
    levels_stack_and_need_as_many_unlocks,
    shared_holders_share_and_exclude_writers,
    one_session_may_hold_both_modes,
    unlock_without_a_level_is_not_held_and_changes_nothing,
    closed_lock_refuses_every_operation_and_closes_twice,
    close_frees_the_key_for_another_session,
    drop_frees_the_key_for_another_session,
    waiters_are_granted_in_arrival_order,
    queued_writer_makes_shared_try_fail,
    timed_wait_gives_up_within_bounds,
    timed_wait_succeeds_when_released_inside_the_window,
    zero_timeout_is_a_plain_try,
    cancelled_wait_leaves_no_trace,
    many_tasks_on_one_key_never_overlap,
    is_held_reports_any_mode,
    lost_resolves_at_once_without_levels_and_not_while_held,
);
