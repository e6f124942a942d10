//! Signing seeds sealed at rest with the key-encryption key (KEK): the
//! upgrade from plaintext seeds, what the `signing_keys.seed` column holds,
//! rotation of the KEK, and the start refused when no configured key opens
//! a seed.

use std::time::Duration;

use base64::Engine as _;
use dialstack_common::auth::{new_claims, Role, SigningKey};
use dialstack_common::db::{Db, Migration};
use user_service::db::migrations::MIGRATION_SEALED_SEEDS;
use user_service::db::{Repo, MIGRATIONS};
use user_service::kek::{Kek, SeedSealer, KEK_VAR, PREVIOUS_VAR};

use crate::helpers::{
    fresh_mysql_url, fresh_sqlite_url, kid_of, random_kek, spawn_app, store_seed, stored_seeds,
    try_spawn_app, ADMIN_PASSWORD,
};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn kek_id(kek: &str) -> String {
    Kek::parse(KEK_VAR, kek).unwrap().id().to_owned()
}

/// Checks that every stored seed is sealed under `kek` alone, that it does
/// not hold its seed in the clear, and that it opens to the key whose public
/// half user-service publishes.
fn assert_sealed_under(
    engine: &str,
    kek: &str,
    rows: &[(String, String)],
    published: &[(String, String)],
) {
    let alone = SeedSealer::new(Kek::parse(KEK_VAR, kek).unwrap(), None);
    for (kid, stored) in rows {
        let prefix = format!("v1:{}:", kek_id(kek));
        assert!(
            stored.starts_with(&prefix),
            "{engine}: {kid} is stored as {stored:?}, not sealed under {prefix}"
        );
        let seed = alone
            .open(kid, stored)
            .unwrap_or_else(|e| panic!("{engine}: {kid} {e}"));
        assert!(
            !stored.contains(&b64().encode(seed)),
            "{engine}: {kid} holds its seed"
        );
        let jwk = SigningKey::from_seed(kid.clone(), &seed).unwrap().jwk();
        assert!(
            published.contains(&(kid.clone(), jwk.x.clone())),
            "{engine}: {kid} opens to a key that is not the published one"
        );
    }
}

/// A database as the release before sealing left it: the schema up to
/// migration 8 (`seed` VARCHAR(64)), the admin, and a plaintext seed.
/// Returns an admin token signed with that key, and its kid.
async fn previous_release(url: &str) -> (String, String) {
    let before: Vec<Migration> = MIGRATIONS
        .iter()
        .copied()
        .filter(|m| m.version < MIGRATION_SEALED_SEEDS.version)
        .collect();
    let db = Db::connect(url).await.unwrap();
    db.migrate(&before).await.unwrap();
    let repo = Repo::new(db.clone());
    let hash = user_service::domain::hash_password(ADMIN_PASSWORD)
        .await
        .unwrap();
    let admin = repo.upsert_user("admin", Role::Admin, &hash).await.unwrap();
    let key = repo.current_signing_key().await.unwrap();
    db.pool.close().await;
    let token = key.sign(&new_claims(
        &admin.id,
        Role::Admin,
        Duration::from_secs(3600),
    ));
    (token, key.kid)
}

async fn seeds_are_sealed_and_the_kek_rotates(engine: &str, url: String) {
    let (kek_a, kek_b) = (random_kek(), random_kek());

    // The previous release: its schema, a plaintext seed, and a token that
    // key signed.
    let (first, first_kid) = previous_release(&url).await;
    let rows = stored_seeds(&url).await;
    assert_eq!(rows.len(), 1, "{engine}");
    assert_eq!(rows[0].0, first_kid, "{engine}");
    assert_eq!(
        b64().decode(&rows[0].1).map(|s| s.len()),
        Ok(32),
        "{engine}: plaintext before the upgrade"
    );

    // Upgraded, with a KEK: the plaintext row is sealed at start; the token
    // signed before still verifies.
    let app = spawn_app(
        &url,
        &[(KEK_VAR, &kek_a), ("DIALSTACK_KEY_PUBLISH_DELAY_SECS", "0")],
    )
    .await;
    assert_eq!(app.me(&first).await, 200, "{engine}");
    assert_sealed_under(engine, &kek_a, &stored_seeds(&url).await, &app.jwks().await);
    // A second signing key, created and sealed under this KEK.
    let admin = app.admin_token().await;
    let second_kid = app.rotate(&admin).await;
    let second = app.admin_token().await;
    assert_eq!(kid_of(&second), second_kid, "{engine}: the new key signs");
    assert_ne!(second_kid, first_kid, "{engine}");
    let rows = stored_seeds(&url).await;
    assert_eq!(rows.len(), 2, "{engine}");
    assert_sealed_under(engine, &kek_a, &rows, &app.jwks().await);
    let published = app.jwks().await;
    app.stop().await;

    // KEK rotation: the new key current, the old one previous. Every row is
    // sealed again under the new key at start; tokens signed before verify.
    let app = spawn_app(&url, &[(KEK_VAR, &kek_b), (PREVIOUS_VAR, &kek_a)]).await;
    assert_eq!(app.me(&first).await, 200, "{engine}");
    assert_eq!(app.me(&second).await, 200, "{engine}");
    assert_eq!(app.jwks().await, published, "{engine}: same signing keys");
    assert_sealed_under(engine, &kek_b, &stored_seeds(&url).await, &published);
    app.stop().await;

    // The old key dropped: the new one alone opens every seed.
    let app = spawn_app(&url, &[(KEK_VAR, &kek_b)]).await;
    assert_eq!(app.me(&first).await, 200, "{engine}");
    assert_eq!(app.me(&second).await, 200, "{engine}");
    app.stop().await;

    // A key that opens none of them, or none at all: the start is refused,
    // naming the variables, and the stored keys are left as they were (no
    // new key generated over them).
    let before = stored_seeds(&url).await;
    let wrong = random_kek();
    for (what, vars) in [
        ("the old key", vec![(KEK_VAR, kek_a.as_str())]),
        ("another key", vec![(KEK_VAR, wrong.as_str())]),
        ("no key", vec![]),
    ] {
        let Err(e) = try_spawn_app(&url, &vars).await else {
            panic!("{engine}: user-service started with {what}");
        };
        let msg = format!("{e:#}");
        assert!(
            msg.contains(KEK_VAR) && msg.contains(&kek_id(&kek_b)),
            "{engine}, {what}: {msg}"
        );
        assert!(msg.contains("cannot be read"), "{engine}, {what}: {msg}");
    }
    assert_eq!(stored_seeds(&url).await, before, "{engine}");
}

async fn a_seed_moved_to_another_row_stops_the_start(engine: &str, url: String) {
    let kek = random_kek();
    let vars = [
        (KEK_VAR, kek.as_str()),
        ("DIALSTACK_KEY_PUBLISH_DELAY_SECS", "0"),
    ];
    let app = spawn_app(&url, &vars).await;
    let admin = app.admin_token().await;
    app.rotate(&admin).await;
    app.stop().await;
    let rows = stored_seeds(&url).await;
    assert_eq!(rows.len(), 2, "{engine}");
    // Someone with access to the table swaps the two sealed seeds.
    store_seed(&url, &rows[0].0, &rows[1].1).await;
    store_seed(&url, &rows[1].0, &rows[0].1).await;
    let Err(e) = try_spawn_app(&url, &vars).await else {
        panic!("{engine}: user-service started with swapped seeds");
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains("does not open") && msg.contains(KEK_VAR),
        "{engine}: {msg}"
    );
}

#[tokio::test]
async fn sqlite_seeds_are_sealed_and_the_kek_rotates() {
    seeds_are_sealed_and_the_kek_rotates("sqlite", fresh_sqlite_url()).await;
}

#[tokio::test]
async fn mariadb_seeds_are_sealed_and_the_kek_rotates() {
    seeds_are_sealed_and_the_kek_rotates("mariadb", fresh_mysql_url()).await;
}

#[tokio::test]
async fn sqlite_a_seed_moved_to_another_row_stops_the_start() {
    a_seed_moved_to_another_row_stops_the_start("sqlite", fresh_sqlite_url()).await;
}

#[tokio::test]
async fn mariadb_a_seed_moved_to_another_row_stops_the_start() {
    a_seed_moved_to_another_row_stops_the_start("mariadb", fresh_mysql_url()).await;
}
