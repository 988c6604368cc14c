//! The web console's health badge of a bot instance: renewing, late, expired
//! or locked, from facts its record holds (pure logic, no I/O).

use serde::Serialize;
use time::OffsetDateTime;

/// How a bot instance is doing, worst first when several apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceHealth {
    /// A lock in force names the instance, its bot or one of its roles.
    Locked,
    /// Its newest credential has expired.
    Expired,
    /// Past three quarters of its credential's lifetime: an agent renews by
    /// half of what remains at the latest, so it should have by now.
    Late,
    /// Within its credential's lifetime, renewing on schedule.
    Renewing,
}

/// The badge of an instance whose newest credential was issued at `issued`
/// and is valid until `not_after` (both unknown for a record that has none).
pub fn instance_health(
    now: OffsetDateTime,
    locked: bool,
    issued: Option<OffsetDateTime>,
    not_after: Option<OffsetDateTime>,
) -> InstanceHealth {
    if locked {
        return InstanceHealth::Locked;
    }
    let Some(not_after) = not_after else {
        return InstanceHealth::Expired;
    };
    if now >= not_after {
        return InstanceHealth::Expired;
    }
    match issued {
        Some(issued) if issued < not_after => {
            let lifetime = not_after - issued;
            if now >= issued + lifetime * 3 / 4 {
                InstanceHealth::Late
            } else {
                InstanceHealth::Renewing
            }
        }
        _ => InstanceHealth::Renewing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn badges() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(20000);
        let end = t0 + Duration::hours(1);
        let at = |m: i64| t0 + Duration::minutes(m);
        let h = |now, locked| instance_health(now, locked, Some(t0), Some(end));
        assert_eq!(h(at(10), false), InstanceHealth::Renewing);
        assert_eq!(h(at(44), false), InstanceHealth::Renewing);
        assert_eq!(h(at(45), false), InstanceHealth::Late);
        assert_eq!(h(at(60), false), InstanceHealth::Expired);
        // A lock outranks everything: the instance cannot renew at all.
        assert_eq!(h(at(10), true), InstanceHealth::Locked);
        assert_eq!(h(at(90), true), InstanceHealth::Locked);
        // No credential known: nothing vouches for it.
        assert_eq!(
            instance_health(at(1), false, None, None),
            InstanceHealth::Expired
        );
        assert_eq!(
            instance_health(at(1), false, None, Some(end)),
            InstanceHealth::Renewing
        );
    }
}
