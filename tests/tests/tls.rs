//! TLS on the outbound connections (issue 15), against real TLS endpoints
//! each test starts for itself with a CA generated at test time
//! (`dialstack_tests::tls`): MariaDB with `require_secure_transport`, a
//! RabbitMQ node with only a TLS listener, tansu behind a rustls
//! terminator, and an https JWKS that a real task-scheduler binary fetches.
//! Each checks that the right CA works, and that no TLS or the wrong CA
//! fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dialstack_common::auth::Role;
use dialstack_common::bus::{
    BusOptions, Channel, Delivery, HandleError, Handler, OutMessage, Subscription, EVENTS,
};
use dialstack_common::db::{text_column, Db};
use dialstack_common::tls::TlsConfig;
use dialstack_tests::issuer::TestIssuer;
use dialstack_tests::procs::{log_dir, ServiceProc};
use dialstack_tests::tls::{
    acceptor, Pki, PrivateMariaDb, PrivateRabbitMq, PrivateTansu, Scratch, TlsTerminator,
};
use dialstack_tests::{eventually, free_tcp_port, fresh_sqlite_url, unique};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Hands every delivery to the test.
struct Collect(mpsc::UnboundedSender<Delivery>);

#[async_trait::async_trait]
impl Handler for Collect {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandleError> {
        let _ = self.0.send(delivery.clone());
        Ok(())
    }
}

fn message(text: &str) -> OutMessage {
    OutMessage {
        id: uuid::Uuid::now_v7().to_string(),
        routing_key: "tls.hello".into(),
        key: "k1".into(),
        payload: bytes::Bytes::copy_from_slice(text.as_bytes()),
    }
}

/// Publishes one message on `publisher`, consumes it through `consumer`
/// and returns what arrived.
async fn round_trip(publisher: &Channel, consumer: &Channel, text: &str) -> String {
    let sub = Subscription::new(unique("tls-"), &["tls.#"]);
    consumer.prepare(&sub).await.expect("declare the queue");
    publisher
        .publish(&message(text))
        .await
        .expect("published and confirmed");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let running = {
        let consumer = consumer.clone();
        let stop = stop.clone();
        tokio::spawn(async move { consumer.consume(sub, Arc::new(Collect(tx)), stop).await })
    };
    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a delivery within 60 s")
        .expect("the consumer is running");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), running).await;
    String::from_utf8_lossy(&got.payload).into_owned()
}

#[tokio::test]
async fn mysql_over_tls_verifies_the_server_against_the_ca() {
    let scratch = Scratch::new("tls-mysql");
    let pki = Pki::generate(&scratch.path.join("pki"));
    let server = PrivateMariaDb::start(&pki, &scratch.path.join("mariadb")).await;
    let ca = pki.ca.display();

    // verify_ca with the CA in the URL: the connection that creates the
    // database and the pool's connections all run over TLS.
    let db = Db::connect(&server.url(
        &unique("dstls_"),
        &format!("ssl-mode=verify_ca&ssl-ca={ca}"),
    ))
    .await
    .expect("verify_ca with the right CA connects");
    db.migrate(&[]).await.expect("migrations over TLS");
    let row = sqlx::query("SHOW SESSION STATUS LIKE 'Ssl_version'")
        .fetch_one(&db.pool)
        .await
        .expect("query over TLS");
    let version = text_column(&row, 1).unwrap().unwrap_or_default();
    assert!(
        version.starts_with("TLSv1."),
        "session TLS version {version:?}"
    );

    // verify_identity (the certificate names 127.0.0.1) with the CA from
    // DIALSTACK_CA_FILE rather than the URL.
    let tls = TlsConfig::with_ca_file(&pki.ca).expect("the CA file reads");
    let db = Db::connect_with(
        &server.url(&unique("dstls_"), "ssl-mode=verify_identity"),
        &tls,
    )
    .await
    .expect("verify_identity with the CA bundle connects");
    sqlx::query("SELECT 1")
        .execute(&db.pool)
        .await
        .expect("query over TLS");

    // Without TLS the server refuses the login (MariaDB 10.11 answers
    // 1045 under require_secure_transport, MySQL 3159 "insecure transport").
    let err = Db::connect(&server.url(&unique("dstls_"), "ssl-mode=disabled"))
        .await
        .expect_err("a plaintext connection must be refused")
        .to_string();
    assert!(
        err.contains("1045") || err.contains("insecure transport"),
        "without TLS: {err}"
    );

    // With the wrong CA, or with the system's CAs only, the client refuses
    // the server's certificate.
    for params in [
        format!("ssl-mode=verify_ca&ssl-ca={}", pki.other_ca.display()),
        "ssl-mode=verify_identity".to_owned(),
    ] {
        let err = Db::connect(&server.url(&unique("dstls_"), &params))
            .await
            .expect_err("an untrusted server certificate must be refused")
            .to_string();
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "{params}: {err}"
        );
    }
}

#[tokio::test]
async fn amqps_publishes_and_consumes_and_refuses_a_wrong_ca() {
    let scratch = Scratch::new("tls-amqp");
    let pki = Pki::generate(&scratch.path.join("pki"));
    let broker = PrivateRabbitMq::start(&pki, &scratch.path.join("rabbitmq")).await;
    let ns = unique("tls");
    let base = format!(
        "amqps://guest:guest@127.0.0.1:{}/%2f?namespace={ns}&queue_expires_ms=600000",
        broker.port
    );

    // The CA from the URL for one channel, from the variables
    // (DIALSTACK_CA_FILE through BusOptions) for the other.
    let publisher = Channel::connect(&format!("{base}&ssl_ca={}", pki.ca.display()), EVENTS)
        .await
        .expect("amqps with the CA in the URL");
    let options = BusOptions {
        ca_file: Some(pki.ca.clone()),
        ..Default::default()
    };
    let consumer = Channel::connect_with(&base, EVENTS, &options)
        .await
        .expect("amqps with the CA bundle");
    assert_eq!(
        round_trip(&publisher, &consumer, "over amqps").await,
        "over amqps"
    );
    publisher.health().await.expect("healthy over amqps");

    // The wrong CA, or the system's CAs only: the certificate is refused.
    for url in [
        format!("{base}&ssl_ca={}", pki.other_ca.display()),
        base.clone(),
    ] {
        let err = Channel::connect(&url, EVENTS)
            .await
            .expect_err("an untrusted broker certificate must be refused")
            .to_string();
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "{url}: {err}"
        );
    }
    // Plain AMQP to the TLS listener gets nowhere.
    let plain = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?namespace={ns}",
        broker.port
    );
    assert!(Channel::connect(&plain, EVENTS).await.is_err());
}

#[tokio::test]
async fn kafka_over_tls_produces_and_consumes_and_refuses_a_wrong_ca() {
    let scratch = Scratch::new("tls-kafka");
    let pki = Pki::generate(&scratch.path.join("pki"));
    let tansu_port = free_tcp_port();
    let terminator =
        TlsTerminator::start(acceptor(&pki), ([127, 0, 0, 1], tansu_port).into()).await;
    let _tansu =
        PrivateTansu::start(tansu_port, terminator.port, &scratch.path.join("tansu")).await;
    let ns = unique("tls");
    let base = format!(
        "kafka://127.0.0.1:{}?namespace={ns}&partitions=1&security_protocol=ssl",
        terminator.port
    );

    // Admin (topic creation), producer, consumer group and lag reader all
    // go through the terminator: tansu advertises only its address.
    let publisher = Channel::connect(&format!("{base}&ssl_ca={}", pki.ca.display()), EVENTS)
        .await
        .expect("kafka over TLS with the CA in the URL");
    let options = BusOptions {
        ca_file: Some(pki.ca.clone()),
        ..Default::default()
    };
    let consumer = Channel::connect_with(&base, EVENTS, &options)
        .await
        .expect("kafka over TLS with the CA bundle");
    assert_eq!(
        round_trip(&publisher, &consumer, "over kafka tls").await,
        "over kafka tls"
    );
    consumer.health().await.expect("metadata over TLS");
    eventually(
        "the lag reader answers over TLS",
        Duration::from_secs(30),
        || {
            let consumer = consumer.clone();
            async move {
                consumer
                    .backlog("tls-lag-probe")
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;

    // The wrong CA: librdkafka refuses the certificate, so the topics
    // cannot be created and the connection fails.
    let err = Channel::connect(&format!("{base}&ssl_ca={}", pki.other_ca.display()), EVENTS)
        .await
        .expect_err("an untrusted broker certificate must be refused")
        .to_string();
    assert!(err.contains("certificate verify failed"), "wrong CA: {err}");
}

#[tokio::test]
async fn task_scheduler_fetches_jwks_over_https_with_the_ca_bundle() {
    let scratch = Scratch::new("tls-jwks");
    let pki = Pki::generate(&scratch.path.join("pki"));
    let issuer = TestIssuer::start_https(acceptor(&pki)).await;
    assert!(issuer.jwks_url.starts_with("https://"));
    let token = issuer.token("tls-admin", Role::Admin, &[]);
    let env = |ca: Option<&str>| {
        let mut env: HashMap<String, String> = [
            ("DIALSTACK_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("DIALSTACK_DATABASE_URL", fresh_sqlite_url()),
            ("DIALSTACK_EVENTS_URL", "memory://tls".to_owned()),
            ("DIALSTACK_COMMANDS_URL", "memory://tls".to_owned()),
            ("DIALSTACK_JWKS_URL", issuer.jwks_url.clone()),
            ("DIALSTACK_SHUTDOWN_GRACE_SECS", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(ca) = ca {
            env.insert("DIALSTACK_CA_FILE".into(), ca.to_owned());
        }
        env
    };
    let http = reqwest::Client::new();
    let campaigns = |url: &str| {
        http.get(format!("{url}/v1/campaigns"))
            .bearer_auth(&token)
            .send()
    };

    // With the CA bundle the scheduler fetches the key over https and
    // accepts the token.
    let with_ca = ServiceProc::start(
        "task-scheduler",
        &env(Some(&pki.ca.display().to_string())),
        &log_dir("tls_jwks_over_https/with-ca"),
    )
    .await;
    let status = campaigns(&with_ca.url)
        .await
        .expect("scheduler answers")
        .status();
    assert_eq!(status, 200, "a token signed by the https JWKS's key");

    // Without it the issuer's certificate is not trusted: no key, the same
    // token is refused, and the log says the fetch failed.
    let without_logs = log_dir("tls_jwks_over_https/without-ca");
    let without = ServiceProc::start("task-scheduler", &env(None), &without_logs).await;
    let status = campaigns(&without.url)
        .await
        .expect("scheduler answers")
        .status();
    assert_eq!(status, 401, "no key without the CA bundle");
    let log = without_logs.join("task-scheduler.log");
    eventually(
        "the failed https fetch in the log",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                if text.contains("jwks fetch failed") {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        },
    )
    .await;
}
