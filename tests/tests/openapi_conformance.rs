//! The HTTP API against its own OpenAPI document, checked by schemathesis
//! (from PyPI; the test command installs it and names it in
//! `EAGATE_TEST_SCHEMATHESIS`): a real `eagate serve`, every operation,
//! with each kind of credential (admin, platform, an affiliate's own
//! token, none). No 5xx, and every status code, content type, header and
//! body as the document says.
//!
//! The seed is fixed so a run is repeatable; `EAGATE_SCHEMATHESIS_SEED`
//! and `EAGATE_SCHEMATHESIS_EXAMPLES` (default 20 a phase) explore further
//! by hand.

use std::process::Command;

use eagate_tests::process::Gateway;

fn schemathesis() -> String {
    std::env::var("EAGATE_TEST_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!(
            "EAGATE_TEST_SCHEMATHESIS is not set: this test needs the schemathesis that \
             scripts/test.sh installs; run the suite with scripts/test.sh"
        )
    })
}

/// Runs schemathesis against `gateway` with `token` (if any); its output on
/// failure.
fn check_conformance(gateway: &Gateway, who: &str, token: Option<&str>) {
    let seed = std::env::var("EAGATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("EAGATE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "20".into());
    let mut command = Command::new(schemathesis());
    command
        .arg("run")
        .arg(format!("{}/openapi.json", gateway.api))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            // One worker: schemathesis 4.32 has failed inside itself
            // (a KeyError in its generation cache) with two.
            "--workers",
            "1",
        ])
        .env("NO_COLOR", "1");
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.output().expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis with {who} found what the document does not say (seed {seed}):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It really ran: every operation was tested.
    assert!(stdout.contains("Tested:"), "{stdout}");
}

#[test]
fn every_operation_answers_as_the_openapi_document_says_with_every_kind_of_credential() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    // Data for the operations to find: a device, a signal, an affiliate.
    gateway.register("gold");
    gateway.publish("gold");
    let data_dir = data.path().to_str().expect("a UTF-8 path");
    let platform = gateway.eagate_ok(&[
        "token",
        "create",
        "--scope",
        "platform",
        "--data-dir",
        data_dir,
    ]);
    let platform = platform
        .lines()
        .last()
        .expect("the token")
        .trim()
        .to_owned();
    let enrolled: serde_json::Value = serde_json::from_str(
        &ureq::post(&format!("{}/v1/affiliates", gateway.api))
            .header("Authorization", &format!("Bearer {platform}"))
            .header("Content-Type", "application/json")
            .send(serde_json::json!({ "user_id": "user-st" }).to_string())
            .expect("an affiliate enrols")
            .body_mut()
            .read_to_string()
            .expect("a body"),
    )
    .expect("JSON");
    let affiliate = enrolled["token"].as_str().expect("the affiliate's token");

    check_conformance(&gateway, "an admin token", Some(gateway.admin_token()));
    check_conformance(&gateway, "a platform token", Some(&platform));
    check_conformance(&gateway, "an affiliate's token", Some(affiliate));
    check_conformance(&gateway, "no token", None);
}
