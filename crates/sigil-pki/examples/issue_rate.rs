//! Single-threaded issuance throughput next to the raw aws-lc-rs P-256 signing rate.
//!
//! Run: `cargo run --release -p sigil-pki --example issue_rate`

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use sigil_pki::{CaPurpose, ClientIdentity, SoftwareKeyManager, TlsKeyPair, X509Ca};

const RUN_FOR: Duration = Duration::from_secs(2);

/// Call `f` repeatedly for RUN_FOR and return calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f(); // warm-up
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "keygen failed")?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref())
        .map_err(|_| "key load failed")?;
    // A message about the size of a leaf TBSCertificate.
    let msg = vec![0x5au8; 700];
    let sign_rate = rate(|| {
        let sig = kp.sign(&rng, &msg).map(|s| s.as_ref().len());
        std::hint::black_box(sig.ok());
    });

    let (ca, _) = X509Ca::generate(&SoftwareKeyManager, CaPurpose::Client, "prod")?;
    let spki = TlsKeyPair::generate()?.spki_der();
    let id = ClientIdentity {
        cluster: "prod".into(),
        bot: "ci-bot".into(),
        bot_uid: String::new(),
        instance_id: "5b0c9a3e-0f7e-4c1e-9a55-3f0d7f1d2c11".into(),
        roles: vec!["deploy".into(), "read".into()],
        generation: 7,
        renewable: true,
        join_method: "github".into(),
        logins: vec!["ubuntu".into()],
        delegated: false,
        join_attributes: Default::default(),
    };
    let ttl = Duration::from_secs(3600);
    let mut failures = 0u64;
    let issue_rate = rate(|| match ca.issue_client(&spki, &id, ttl) {
        Ok(c) => {
            std::hint::black_box(c.der.len());
        }
        Err(_) => failures += 1,
    });
    if failures > 0 {
        return Err(format!("{failures} issuances failed").into());
    }

    println!(
        "raw aws-lc-rs P-256 sign:  {sign_rate:>10.0} /s  ({:.1} us)",
        1e6 / sign_rate
    );
    println!(
        "X509Ca::issue_client:      {issue_rate:>10.0} /s  ({:.1} us)",
        1e6 / issue_rate
    );
    println!(
        "ratio (sign rate / issue rate): {:.2}x",
        sign_rate / issue_rate
    );
    Ok(())
}
