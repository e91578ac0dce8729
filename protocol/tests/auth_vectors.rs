//! The independent vectors of `shared/spec/device-auth-vectors.json`,
//! reproduced byte for byte.

use eagate_protocol::secret::SecretParseError;
use eagate_protocol::{AuthTranscript, DeviceId, DeviceSecret};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    secret: String,
    secret_hex: String,
    device_id: String,
    timestamp_ms: u64,
    nonce_hex: String,
    binding_hex: String,
    transcript_hex: String,
    mac_hex: String,
}

fn cases() -> Vec<Case> {
    let json = include_str!("data/device-auth-vectors.json");
    let vectors: Vectors = serde_json::from_str(json).expect("vector file parses");
    assert_eq!(
        vectors.cases.len(),
        4,
        "every vector in the file is checked"
    );
    vectors.cases
}

fn array<const N: usize>(hex_text: &str) -> [u8; N] {
    hex::decode(hex_text)
        .expect("vector hex")
        .try_into()
        .expect("vector length")
}

#[test]
fn every_vector_secret_text_decodes_to_its_bytes_and_back() {
    for case in cases() {
        let secret = DeviceSecret::parse(&case.secret).expect("vector secret parses");
        assert_eq!(hex::encode(secret.expose_bytes()), case.secret_hex);
        assert_eq!(secret.to_text().as_str(), case.secret);
    }
}

#[test]
fn every_vector_transcript_and_mac_match_byte_for_byte() {
    for case in cases() {
        let secret = DeviceSecret::parse(&case.secret).unwrap();
        let device_id = DeviceId::new(&case.device_id).expect("vector device id is valid");
        let transcript = AuthTranscript::new(
            &device_id,
            case.timestamp_ms,
            &array(&case.nonce_hex),
            &array(&case.binding_hex),
        );
        assert_eq!(hex::encode(transcript.as_bytes()), case.transcript_hex);
        let mac = transcript.mac(&secret);
        assert_eq!(hex::encode(mac), case.mac_hex, "device {}", case.device_id);
        assert!(transcript.verify(&secret, &array(&case.mac_hex)));
    }
}

#[test]
fn a_mac_with_any_bit_flipped_does_not_verify() {
    for case in cases() {
        let secret = DeviceSecret::parse(&case.secret).unwrap();
        let transcript = AuthTranscript::new(
            &DeviceId::new(&case.device_id).unwrap(),
            case.timestamp_ms,
            &array(&case.nonce_hex),
            &array(&case.binding_hex),
        );
        let good: [u8; 32] = array(&case.mac_hex);
        for bit in 0..256 {
            let mut bad = good;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!transcript.verify(&secret, &bad));
        }
    }
}

#[test]
fn a_mac_from_another_connection_binding_does_not_verify() {
    let case = &cases()[0];
    let secret = DeviceSecret::parse(&case.secret).unwrap();
    let device_id = DeviceId::new(&case.device_id).unwrap();
    let nonce = array(&case.nonce_hex);
    let captured = AuthTranscript::new(&device_id, case.timestamp_ms, &nonce, &[0xab; 32]);
    let replayed_on = AuthTranscript::new(&device_id, case.timestamp_ms, &nonce, &[0xac; 32]);
    assert!(!replayed_on.verify(&secret, &captured.mac(&secret)));
}

#[test]
fn a_mac_under_another_secret_does_not_verify() {
    let all = cases();
    let (first, second) = (&all[0], &all[1]);
    let transcript = AuthTranscript::new(
        &DeviceId::new(&first.device_id).unwrap(),
        first.timestamp_ms,
        &array(&first.nonce_hex),
        &array(&first.binding_hex),
    );
    let other = DeviceSecret::parse(&second.secret).unwrap();
    assert!(!transcript.verify(&other, &array(&first.mac_hex)));
}

const GOOD: &str = "egs_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

#[test]
fn secret_without_the_egs_prefix_is_refused_as_wrong_prefix() {
    for text in [
        "EGS_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "egs-AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "",
        " egs_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
    ] {
        assert_eq!(
            DeviceSecret::parse(text),
            Err(SecretParseError::WrongPrefix),
            "{text:?}"
        );
    }
}

#[test]
fn secret_of_the_wrong_length_is_refused_with_its_length() {
    let short = &GOOD[..46];
    let long = format!("{GOOD}A");
    let with_newline = format!("{GOOD}\n");
    let padded = format!("{GOOD}=");
    assert_eq!(
        DeviceSecret::parse(short),
        Err(SecretParseError::WrongLength(46))
    );
    assert_eq!(
        DeviceSecret::parse(&long),
        Err(SecretParseError::WrongLength(48))
    );
    assert_eq!(
        DeviceSecret::parse(&with_newline),
        Err(SecretParseError::WrongLength(48))
    );
    assert_eq!(
        DeviceSecret::parse(&padded),
        Err(SecretParseError::WrongLength(48))
    );
    assert_eq!(
        DeviceSecret::parse("egs_"),
        Err(SecretParseError::WrongLength(4))
    );
}

#[test]
fn secret_with_a_character_outside_base64url_is_refused_at_its_position() {
    for (position, bad) in [(4, '+'), (10, '/'), (46, '='), (20, ' '), (30, '.')] {
        let mut text = GOOD.to_owned();
        text.replace_range(position..position + 1, &bad.to_string());
        assert_eq!(
            DeviceSecret::parse(&text),
            Err(SecretParseError::InvalidCharacter { position }),
            "{text:?}"
        );
    }
    // A multi-byte character keeps the length at 47 bytes only if it
    // replaces two ASCII ones; it is still refused at its first byte.
    let mut text = GOOD[..45].to_owned();
    text.push('é');
    assert_eq!(
        DeviceSecret::parse(&text),
        Err(SecretParseError::InvalidCharacter { position: 45 })
    );
}

#[test]
fn secret_whose_last_character_carries_extra_bits_is_refused_as_non_canonical() {
    // ...Hh8 encodes 0x1e 0x1f with the two spare bits zero; Hh9 sets one.
    let text = format!("{}9", &GOOD[..46]);
    assert_eq!(
        DeviceSecret::parse(&text),
        Err(SecretParseError::NonCanonical)
    );
}

#[test]
fn secret_errors_have_distinct_messages_that_say_what_is_expected() {
    let messages = [
        SecretParseError::WrongPrefix.to_string(),
        SecretParseError::WrongLength(46).to_string(),
        SecretParseError::InvalidCharacter { position: 9 }.to_string(),
        SecretParseError::NonCanonical.to_string(),
    ];
    assert!(messages[0].contains("egs_"));
    assert!(messages[1].contains("47") && messages[1].contains("46"));
    assert!(messages[2].contains("byte 9") && messages[2].contains("A-Z"));
    assert!(messages[3].contains("mistyped"));
    for (i, a) in messages.iter().enumerate() {
        for b in &messages[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn secret_debug_output_never_shows_the_secret() {
    let secret = DeviceSecret::parse(GOOD).unwrap();
    let shown = format!("{secret:?} {:?}", secret.to_text());
    assert!(!shown.contains(&GOOD[4..]), "{shown}");
    assert!(shown.contains("redacted"));
}
