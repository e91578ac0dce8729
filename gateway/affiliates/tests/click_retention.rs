//! Clicks are kept only as long as they can attribute a signup: the
//! attribution window plus how late a signup may be reported. Older ones
//! are let go (and are let go the same way on replay).

use eagate_affiliates::programme::ReferralError;
use eagate_affiliates::{Programme, ProgrammeConfig, ReferralCode, Signup};

const T0: u64 = 1_790_000_000_000;

fn clicked(programme: &mut Programme, code: ReferralCode, id: &str, address: &str, at: u64) {
    let decided = programme
        .click(code, id, address, "agent", at)
        .expect("a known code");
    assert_eq!(decided.facts.len(), 1, "{id} is a new click");
    decided.facts.iter().for_each(|f| programme.apply(f));
}

#[test]
fn clicks_past_their_retention_are_let_go_and_no_longer_attribute() {
    let config = ProgrammeConfig::default();
    let retention = config.click_retention_ms();
    let mut programme = Programme::new(config);
    let code = ReferralCode::from_random(3);
    let enrolled = programme
        .enrol_affiliate(
            "aff",
            "af_1",
            code,
            &"ab".repeat(32),
            &Default::default(),
            T0,
        )
        .unwrap();
    enrolled.facts.iter().for_each(|f| programme.apply(f));
    clicked(&mut programme, code, "ck_old", "192.0.2.1", T0);
    clicked(
        &mut programme,
        code,
        "ck_mid",
        "192.0.2.2",
        T0 + retention / 2,
    );
    assert_eq!(programme.clicks_kept(), 2);
    // A click a retention later lets the first go, not the second.
    let later = T0 + retention + 1;
    clicked(&mut programme, code, "ck_new", "192.0.2.3", later);
    assert_eq!(programme.clicks_kept(), 2);
    let signup = |click: &str| Signup {
        user_id: format!("user-{click}"),
        code,
        click_id: Some(click.to_owned()),
        source_address: "192.0.2.9".into(),
        email_sha256: "cd".repeat(32),
        email_verified: false,
        occurred_at_ms: later,
    };
    assert_eq!(
        programme.refer(&signup("ck_old"), later),
        Err(ReferralError::UnknownClick("ck_old".into()))
    );
    assert!(programme.refer(&signup("ck_new"), later).is_ok());
    // The same address on the same code within the dedupe interval is a
    // replay; after it, a new click.
    assert!(
        programme
            .click(code, "ck_again", "192.0.2.3", "agent", later + 1)
            .unwrap()
            .replayed
    );
    assert_eq!(
        programme.recent_click("192.0.2.3", code, later + 1),
        Some("ck_new")
    );
    let after = later + programme.config().click_dedupe_ms;
    assert_eq!(programme.recent_click("192.0.2.3", code, after), None);
    clicked(&mut programme, code, "ck_next", "192.0.2.3", after);
}
