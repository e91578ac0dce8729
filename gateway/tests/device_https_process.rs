//! Devices over HTTPS against the real `eagate serve` process: a gateway
//! killed with SIGKILL while an EA holds fills it has not had confirmed, or
//! while its report request is in flight, loses none and stores none twice
//! once it is back, and the EA, resuming from the positions it kept, misses
//! no signal and gets none twice.

mod common;

use std::path::Path;
use std::time::Duration;

use common::https::{HttpsClient, HttpsDevice};
use eagate_protocol::{DeviceId, DeviceSecret};
use eagate_tests::process::Gateway;
use serde_json::json;

/// A device of `gateway` over HTTPS, as an EA with its state file would
/// hold it.
fn device_of(gateway: &Gateway, data_dir: &Path, (id, secret): &(String, String)) -> HttpsDevice {
    let addr = gateway
        .device_https
        .as_deref()
        .expect("the gateway serves devices over HTTPS")
        .parse()
        .unwrap();
    HttpsDevice::new(
        HttpsClient::new(addr, data_dir),
        DeviceId::new(id).unwrap(),
        DeviceSecret::parse(secret).unwrap(),
    )
}

/// The arguments that put a gateway on the Redis at `url`, under a key
/// prefix of its own.
fn on_redis(url: String) -> Vec<String> {
    vec![
        "--redis-url".into(),
        url,
        "--redis-prefix".into(),
        common::fresh_prefix(),
    ]
}

fn fill(seq: u64, signal_id: &str) -> serde_json::Value {
    json!({"seq": seq, "signal_id": signal_id, "kind": "filled", "at_ms": 1_000 + seq,
           "ticket": (5_000 + seq).to_string(), "price": "2350.10", "volume": "0.10"})
}

async fn killed_gateway_loses_no_fill_and_stores_none_twice(extra: &[String]) {
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--device-https-listen", "127.0.0.1:0"];
    args.extend(extra.iter().map(String::as_str));
    let mut gateway = Gateway::start(data.path(), &args);
    let registered = gateway.register("gold");
    let device = device_of(&gateway, data.path(), &registered);
    let session = device.open_session().await;

    let published: Vec<String> = (0..3).map(|_| gateway.publish("gold")).collect();
    let polled = device.poll(&session, "gold:0", 5).await.json();
    let ids: Vec<&str> = polled["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        published.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(polled["positions"], json!({"gold": 3}));

    // The first fill is confirmed while the gateway runs …
    let first = device
        .report(&session, json!([fill(1, &published[0])]))
        .await;
    assert_eq!(first.text(), r#"{"confirmed_up_to":1}"#);
    // … then it dies, and the EA's next two fills cannot be sent: they wait
    // in its queue (its state file), unconfirmed.
    gateway.kill();
    let queued = json!([fill(2, &published[1]), fill(3, &published[2])]);
    let body = serde_json::to_vec(&json!({ "reports": queued })).unwrap();
    let signed = device.sign(
        "POST",
        &format!("/v1/device/reports?session={session}"),
        &body,
    );
    assert!(device.client.try_send(&signed.request).await.is_err());

    gateway.restart();
    let device = device_of(&gateway, data.path(), &registered);
    // The session survives the restart (its token is the store's epoch,
    // MAC'd under the data directory's key). The queue is resent whole,
    // the confirmed fill with it (an EA that died before saving its
    // confirmation): each stored once.
    let resent = json!([
        fill(1, &published[0]),
        fill(2, &published[1]),
        fill(3, &published[2])
    ]);
    let confirmed = device.report(&session, resent).await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text());
    assert_eq!(confirmed.text(), r#"{"confirmed_up_to":3}"#);
    gateway.assert_each_filled_once_in_order(&published, &registered.0);

    // From the positions it kept, the EA gets nothing again, and the next
    // signal once.
    let nothing = device.poll(&session, "gold:3", 0).await;
    assert_eq!(nothing.text(), r#"{"signals":[],"positions":{"gold":3}}"#);
    let next = gateway.publish("gold");
    let polled = device.poll(&session, "gold:3", 5).await.json();
    assert_eq!(polled["signals"].as_array().unwrap().len(), 1);
    assert_eq!(polled["signals"][0]["signal_id"], next.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateway_loses_no_https_fill_and_stores_none_twice_on_sled() {
    killed_gateway_loses_no_fill_and_stores_none_twice(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateway_loses_no_https_fill_and_stores_none_twice_on_redis() {
    killed_gateway_loses_no_fill_and_stores_none_twice(&on_redis(eagate_tests::redis_url())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateway_loses_no_https_fill_and_stores_none_twice_on_redis_cluster() {
    killed_gateway_loses_no_fill_and_stores_none_twice(
        &on_redis(eagate_tests::redis_cluster_url()),
    )
    .await;
}

/// Reports in flight when the gateway is killed: sent, then the kill a few
/// milliseconds later (before, during or after the store took them, and
/// before or after the answer), three times. However far each got, the EA,
/// having no confirmation, resends its batch to the restarted gateway, and
/// every fill is stored exactly once.
async fn reports_in_flight_at_a_kill_are_stored_once_after_the_resend(extra: &[String]) {
    const BATCH: u64 = 10;
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--device-https-listen", "127.0.0.1:0"];
    args.extend(extra.iter().map(String::as_str));
    let mut gateway = Gateway::start(data.path(), &args);
    let registered = gateway.register("gold");
    let published: Vec<String> = (0..3 * BATCH).map(|_| gateway.publish("gold")).collect();
    let session = device_of(&gateway, data.path(), &registered)
        .open_session()
        .await;
    for round in 0..3 {
        let device = device_of(&gateway, data.path(), &registered);
        let first = round * BATCH + 1;
        let batch: Vec<serde_json::Value> = (first..first + BATCH)
            .map(|seq| fill(seq, &published[seq as usize - 1]))
            .collect();
        let body = serde_json::to_vec(&json!({ "reports": batch })).unwrap();
        let signed = device.sign(
            "POST",
            &format!("/v1/device/reports?session={session}"),
            &body,
        );
        let in_flight = tokio::spawn({
            let client = device.client.clone();
            async move { client.try_send(&signed.request).await }
        });
        tokio::time::sleep(Duration::from_millis(3 * round)).await;
        gateway.kill();
        // Whatever came back, the EA resends: a lost answer is no answer.
        let _ = in_flight.await;
        gateway.restart();
        let device = device_of(&gateway, data.path(), &registered);
        let confirmed = device.report(&session, json!(batch)).await;
        assert_eq!(confirmed.status, 200, "{}", confirmed.text());
        assert_eq!(
            confirmed.json()["confirmed_up_to"],
            first + BATCH - 1,
            "round {round}"
        );
    }
    gateway.assert_each_filled_once_in_order(&published, &registered.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_in_flight_at_a_kill_are_stored_once_after_the_resend_on_sled() {
    reports_in_flight_at_a_kill_are_stored_once_after_the_resend(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_in_flight_at_a_kill_are_stored_once_after_the_resend_on_redis_cluster() {
    reports_in_flight_at_a_kill_are_stored_once_after_the_resend(&on_redis(
        eagate_tests::redis_cluster_url(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poll_waiting_when_the_gateway_dies_fails_and_the_next_one_resumes() {
    let data = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(data.path(), &["--device-https-listen", "127.0.0.1:0"]);
    let registered = gateway.register("gold");
    let device = device_of(&gateway, data.path(), &registered);
    let session = device.open_session().await;
    let signed = device.sign(
        "GET",
        &format!("/v1/device/signals?session={session}&after=gold:0&wait=20"),
        b"",
    );
    let waiting = tokio::spawn({
        let client = device.client.clone();
        async move { tokio::time::timeout(Duration::from_secs(10), client.send(&signed.request)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.kill();
    // The poll ends at the kill without an answer the EA could act on.
    match waiting.await {
        // The connection closed under it: the helper found no answer.
        Err(closed) => assert!(closed.is_panic()),
        Ok(Ok(answer)) => assert!(answer.header("Eagate-Signature").is_none()),
        Ok(Err(_waited)) => panic!("the poll still waited 10 s after the gateway died"),
    }
    gateway.restart();
    let device = device_of(&gateway, data.path(), &registered);
    let id = gateway.publish("gold");
    let polled = device.poll(&session, "gold:0", 5).await.json();
    assert_eq!(polled["signals"][0]["signal_id"], id.as_str());
}
