//! The phases of a CA rotation and which key signs and which keys are trusted in
//! each. Pure logic; the auth service stores the state (`sigil-auth` `ca_rotation`).
//!
//! ```text
//!  standby ──init──▶ init ──▶ update_clients ──▶ update_servers ──▶ standby (new CA)
//!                      │            │                   │
//!                      └────────────┴──── rollback ─────┴──▶ standby (old CA)
//! ```
//!
//! The new CA is trusted from `init` on (published in every bundle), signs what the
//! auth service issues from `update_clients` on, and serves the auth service's own TLS
//! certificate from `update_servers` on. The old CA stays trusted until `standby`,
//! so every credential either CA signed keeps verifying through the overlap.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A phase of a rotation in progress (standby is the absence of one).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RotationPhase {
    /// The new CA is trusted everywhere; the old one still signs.
    Init,
    /// The new CA signs what agents are issued; both are trusted.
    UpdateClients,
    /// The auth service serves with a certificate of the new CA too; both trusted.
    UpdateServers,
    /// Going back: the old CA signs again; the new one stays trusted until standby.
    Rollback,
}

/// What a rotation command asks for: a phase, or `standby` (finish).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationTarget {
    Phase(RotationPhase),
    Standby,
}

/// Who moves the rotation forward.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RotationMode {
    /// An administrator runs each phase.
    Manual,
    /// The auth service advances on the schedule (a third of the grace period each).
    Auto,
}

/// When an automatic rotation enters each later phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationSchedule {
    #[serde(with = "time::serde::rfc3339")]
    pub update_clients: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub update_servers: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub standby: OffsetDateTime,
}

impl RotationSchedule {
    /// Thirds of `grace` from `start`: agents have two thirds of it, after the new
    /// CA starts signing, to renew before the old one is no longer trusted.
    pub fn from_grace(start: OffsetDateTime, grace: Duration) -> RotationSchedule {
        let third = grace / 3;
        RotationSchedule {
            update_clients: start + third,
            update_servers: start + third * 2,
            standby: start + grace,
        }
    }

    /// Where an automatic rotation should be at `now`, given where it is.
    pub fn due(&self, phase: RotationPhase, now: OffsetDateTime) -> Option<RotationTarget> {
        use RotationPhase::*;
        match phase {
            Init if now >= self.update_clients => Some(RotationTarget::Phase(UpdateClients)),
            UpdateClients if now >= self.update_servers => {
                Some(RotationTarget::Phase(UpdateServers))
            }
            UpdateServers if now >= self.standby => Some(RotationTarget::Standby),
            // A rollback is an administrator's decision and is finished by one.
            _ => None,
        }
    }
}

/// Which CA does what in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseRoles {
    /// The new CA signs what agents are issued (else the old one does).
    pub new_signs: bool,
    /// The auth service's own TLS certificate comes from the new CA.
    pub new_serves: bool,
}

impl RotationPhase {
    pub const ALL: [RotationPhase; 4] = [
        RotationPhase::Init,
        RotationPhase::UpdateClients,
        RotationPhase::UpdateServers,
        RotationPhase::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::Init => "init",
            RotationPhase::UpdateClients => "update_clients",
            RotationPhase::UpdateServers => "update_servers",
            RotationPhase::Rollback => "rollback",
        }
    }

    pub fn roles(self) -> PhaseRoles {
        match self {
            RotationPhase::Init | RotationPhase::Rollback => PhaseRoles {
                new_signs: false,
                new_serves: false,
            },
            RotationPhase::UpdateClients => PhaseRoles {
                new_signs: true,
                new_serves: false,
            },
            RotationPhase::UpdateServers => PhaseRoles {
                new_signs: true,
                new_serves: true,
            },
        }
    }
}

impl fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RotationTarget {
    /// Parses a phase name as the CLI and API spell it.
    pub fn parse(s: &str) -> Option<RotationTarget> {
        if s == "standby" {
            return Some(RotationTarget::Standby);
        }
        RotationPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .map(RotationTarget::Phase)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RotationTarget::Phase(p) => p.as_str(),
            RotationTarget::Standby => "standby",
        }
    }
}

/// Whether a rotation may go from `from` (`None`: standby) to `to`; the error says
/// which step comes next.
pub fn check_transition(
    from: Option<RotationPhase>,
    to: RotationTarget,
) -> Result<(), TransitionError> {
    use RotationPhase::*;
    use RotationTarget::{Phase, Standby};
    let ok = matches!(
        (from, to),
        (None, Phase(Init))
            | (Some(Init), Phase(UpdateClients))
            | (Some(UpdateClients), Phase(UpdateServers))
            | (Some(UpdateServers), Standby)
            | (Some(Init | UpdateClients | UpdateServers), Phase(Rollback))
            | (Some(Rollback), Standby)
    );
    if ok {
        return Ok(());
    }
    Err(TransitionError {
        from: from.map_or("standby", RotationPhase::as_str),
        to: to.as_str(),
        next: match from {
            None => "init",
            Some(Init) => "update_clients (or rollback)",
            Some(UpdateClients) => "update_servers (or rollback)",
            Some(UpdateServers) => "standby (or rollback)",
            Some(Rollback) => "standby",
        },
    })
}

/// A phase change that skips or reverses a step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a rotation in phase {from} cannot go to {to}; the next phase is {next}")]
pub struct TransitionError {
    pub from: &'static str,
    pub to: &'static str,
    pub next: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use RotationPhase::*;
    use RotationTarget::{Phase, Standby};

    #[test]
    fn only_the_documented_steps_are_allowed() {
        let all_from = [
            None,
            Some(Init),
            Some(UpdateClients),
            Some(UpdateServers),
            Some(Rollback),
        ];
        let all_to = [
            Phase(Init),
            Phase(UpdateClients),
            Phase(UpdateServers),
            Phase(Rollback),
            Standby,
        ];
        let allowed = [
            (None, Phase(Init)),
            (Some(Init), Phase(UpdateClients)),
            (Some(Init), Phase(Rollback)),
            (Some(UpdateClients), Phase(UpdateServers)),
            (Some(UpdateClients), Phase(Rollback)),
            (Some(UpdateServers), Standby),
            (Some(UpdateServers), Phase(Rollback)),
            (Some(Rollback), Standby),
        ];
        for from in all_from {
            for to in all_to {
                assert_eq!(
                    check_transition(from, to).is_ok(),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        let e = check_transition(Some(Init), Standby).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a rotation in phase init cannot go to standby; the next phase is update_clients (or rollback)"
        );
    }

    #[test]
    fn the_new_ca_signs_before_it_serves_and_never_in_rollback() {
        assert_eq!(
            Init.roles(),
            PhaseRoles {
                new_signs: false,
                new_serves: false
            }
        );
        assert!(UpdateClients.roles().new_signs && !UpdateClients.roles().new_serves);
        assert!(UpdateServers.roles().new_signs && UpdateServers.roles().new_serves);
        assert!(!Rollback.roles().new_signs && !Rollback.roles().new_serves);
    }

    #[test]
    fn the_schedule_advances_one_phase_at_a_time_and_never_out_of_rollback() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = RotationSchedule::from_grace(t0, Duration::from_secs(30));
        assert_eq!(s.update_clients, t0 + Duration::from_secs(10));
        assert_eq!(s.standby, t0 + Duration::from_secs(30));
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(s.due(Init, at(9)), None);
        assert_eq!(s.due(Init, at(10)), Some(Phase(UpdateClients)));
        // Late: still one step at a time, so every phase is seen by agents.
        assert_eq!(s.due(Init, at(100)), Some(Phase(UpdateClients)));
        assert_eq!(s.due(UpdateClients, at(19)), None);
        assert_eq!(s.due(UpdateClients, at(20)), Some(Phase(UpdateServers)));
        assert_eq!(s.due(UpdateServers, at(30)), Some(Standby));
        assert_eq!(s.due(Rollback, at(1000)), None);
    }

    #[test]
    fn names_round_trip() {
        for p in RotationPhase::ALL {
            assert_eq!(RotationTarget::parse(p.as_str()), Some(Phase(p)));
        }
        assert_eq!(RotationTarget::parse("standby"), Some(Standby));
        assert_eq!(RotationTarget::parse("Init"), None);
    }
}
