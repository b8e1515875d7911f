//! Waiting for a condition the system reaches on its own time (an agent's repair, a daemon's
//! socket, a program's pin): one polling loop for every test.

use std::time::{Duration, Instant};

/// Asks `cond` every `every` until it holds (`Ok(true)`) or `limit` has passed (`Ok(false)`,
/// after a last look); an error of `cond` ends the wait at once.
pub fn poll<E>(
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> Result<bool, E>,
) -> Result<bool, E> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(every);
    }
}

/// [`poll`] of a condition that cannot fail.
pub fn poll_bool(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(limit, every, || Ok::<_, std::convert::Infallible>(cond())).unwrap_or_else(|e| match e {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_times_out_or_fails() {
        let mut n = 0;
        let held = poll(Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            Ok::<_, ()>(n == 3)
        });
        assert_eq!((held, n), (Ok(true), 3));
        assert!(!poll_bool(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || false
        ));
        assert_eq!(
            poll(Duration::from_secs(5), Duration::ZERO, || Err::<bool, _>(
                "no"
            )),
            Err("no")
        );
    }
}
