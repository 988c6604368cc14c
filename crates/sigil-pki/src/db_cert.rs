//! Database client certificates: what PostgreSQL's `cert` authentication
//! accepts (CN = the database user), issued by the `db-client` CA.

use std::time::Duration;

use crate::der;
use crate::x509_ca::{IssuedCert, OID_KP_CLIENT_AUTH, X509Ca, check_uri_safe};
use crate::{PkiError, Result};

impl X509Ca {
    /// Issue a database client certificate for `subject_spki_der`: Subject
    /// CN=<db_user>, O=<cluster>; SAN URI `sigil://<cluster>/bot/<bot>/<instance_id>`
    /// (who holds it, for audit); EKU clientAuth. The caller checks that
    /// `db_user` is a valid database user name.
    pub fn issue_db_client(
        &self,
        subject_spki_der: &[u8],
        db_user: &str,
        bot: &str,
        instance_id: &str,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        if db_user.is_empty() || db_user.len() > 63 || db_user.chars().any(char::is_control) {
            return Err(PkiError::InvalidName {
                field: "database user",
                value: db_user.to_string(),
                reason: "must be 1-63 characters without control characters",
            });
        }
        check_uri_safe("bot name", bot)?;
        check_uri_safe("instance id", instance_id)?;
        let uri = format!("sigil://{}/bot/{bot}/{instance_id}", self.cluster);
        let mut sans = Vec::new();
        der::tlv(&mut sans, 0x86, uri.as_bytes());
        self.issue_leaf(
            subject_spki_der,
            db_user,
            &sans,
            &[OID_KP_CLIENT_AUTH],
            None,
            ttl,
        )
    }
}
