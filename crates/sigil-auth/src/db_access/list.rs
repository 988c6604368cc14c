//! `sigil db ls`: the databases a caller may reach, with what its roles give.

use sigil_proto::v1::{DatabaseAccess, ListDatabaseAccessResponse};
use sigil_types::RoleSet;

use crate::state::AuthState;

/// Every database for the local admin (`roles` = `None`); else those the
/// roles grant a user and name on, or make the caller the server of.
pub fn list_access(state: &AuthState, roles: Option<&RoleSet>) -> ListDatabaseAccessResponse {
    let mut databases = Vec::new();
    for db in state.cache.databases() {
        let mut access = DatabaseAccess {
            name: db.metadata.name.clone(),
            protocol: db.spec.protocol.clone(),
            uri: db.spec.uri.clone(),
            labels: db.metadata.labels.clone().into_iter().collect(),
            ..Default::default()
        };
        if let Some(roles) = roles {
            let grant = roles.database_grant(&db.metadata.labels);
            access.server = roles.allows_db_server(&db.metadata.labels);
            if grant.is_none() && !access.server {
                continue;
            }
            if let Some(g) = grant {
                access.users = g.users;
                access.names = g.names;
                access.denied_users = g.denied_users;
                access.denied_names = g.denied_names;
            }
        }
        databases.push(access);
    }
    ListDatabaseAccessResponse {
        databases,
        all: roles.is_none(),
    }
}
