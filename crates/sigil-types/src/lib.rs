//! sigil-types: Sigil's resources, SPIFFE IDs, durations, validation and role
//! evaluation. Pure logic: no I/O, no network, no async.

use std::time::Duration;

pub mod app;
pub mod audit_checkpoint;
pub mod bot;
pub mod bot_instance;
pub mod ca_rotation;
pub mod database;
pub mod duration;
pub mod instance_health;
pub mod kubernetes_cluster;
pub mod limits;
pub mod lock;
pub mod parse;
pub mod rbac;
pub mod resource;
pub mod revocation;
pub mod role;
pub mod spiffe;
pub mod spiffe_federation;
pub mod text;
pub mod token;
pub mod workload_identity;

pub use app::{AppSpec, IdentityFields, JWT_ASSERTION_HEADER, Upstream};
pub use audit_checkpoint::{
    Checkpoint, CheckpointError, SignedCheckpoint, WitnessVerdict, parse_head, witness,
};
pub use bot::BotSpec;
pub use bot_instance::{Authentication, BotInstanceSpec, HISTORY_CAP, Heartbeat};
pub use ca_rotation::{
    PhaseRoles, RotationMode, RotationPhase, RotationSchedule, RotationTarget, TransitionError,
    check_transition,
};
pub use database::{
    DatabaseSpec, split_host_port, validate_db_name, validate_db_pattern, validate_db_user,
};
pub use duration::{
    DurationError, HumanDuration, MAX_DURATION, check_duration, checked_expiry, format_duration,
    parse_duration,
};
pub use kubernetes_cluster::{KubernetesCluster, KubernetesClusterSpec};
pub use lock::{LOCK_TARGET_KINDS, LockSpec, LockTarget};
pub use parse::{ParseError, parse_resources};
pub use rbac::{
    DatabaseGrant, HostLogins, KubernetesAccess, LabelField, RoleSet, RoleSpecRef, SshPermissions,
    glob_match, lifted_denies,
};
pub use resource::{
    AnyResource, App, Bot, BotInstance, Database, KNOWN_KINDS, Kind, Lock, Metadata,
    RESOURCE_VERSION, Resource, Role, Token, ValidationError, WorkloadIdentity,
    WorkloadIdentityX509Revocation, check_label_key, check_label_value, check_name,
    validate_envelope, validate_name,
};
pub use revocation::{WorkloadIdentityX509RevocationSpec, normalize_serial_hex};
pub use role::{
    AdminRule, Cidr, KNOWN_VERBS, RULE_RESOURCES, RoleConditions, RoleOptions, RoleSpec,
    validate_host_principal, validate_login,
};
pub use spiffe::{SpiffeId, SpiffeIdError, validate_path_segment, validate_trust_domain};
pub use spiffe_federation::{BundleProfile, SpiffeFederation, SpiffeFederationSpec};
pub use token::{
    AllowRule, BoundKeypairJoin, BoundKeypairOnboarding, BoundKeypairRecovery, GithubJoin,
    GitlabJoin, IamJoin, JoinAttributes, JoinMethodKind, JoinRuleDecision, KubernetesJoin,
    OidcJoin, TokenSpec, TpmJoin,
};
pub use workload_identity::{
    Attributes, Condition, JwtSvidOptions, RenderedIdentity, RuleDecision, RuleEntry,
    SpiffeTemplate, TemplateError, WorkloadIdentitySelector, WorkloadIdentitySpec, WorkloadRules,
    X509SvidOptions,
};

/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Default lifetime of an agent's credentials.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(60 * 60);
/// Default interval between agent renewals.
pub const DEFAULT_RENEWAL_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// Default upper bound on credential TTL when no role or bot sets one.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(12 * 60 * 60);
