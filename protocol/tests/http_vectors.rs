//! The independent vectors of `shared/spec/device-http-vectors.json`
//! (copied to `tests/data/`),
//! reproduced byte for byte: each request's canonical text, body hash and
//! signature, and each answer's.

use eagate_protocol::DeviceSecret;
use eagate_protocol::http_signing::{
    AnswerToSign, RequestToSign, body_sha256, lower_hex, parse_lower_hex,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    secret: String,
    secret_hex: String,
    method: String,
    target: String,
    device_id: String,
    timestamp_ms: u64,
    nonce_hex: String,
    body: String,
    body_sha256_hex: String,
    canonical_hex: String,
    signature_hex: String,
    answer: Answer,
}

#[derive(Deserialize)]
struct Answer {
    status: u16,
    body: String,
    body_sha256_hex: String,
    canonical_hex: String,
    signature_hex: String,
}

fn cases() -> Vec<Case> {
    let json = include_str!("data/device-http-vectors.json");
    let vectors: Vectors = serde_json::from_str(json).expect("vector file parses");
    assert_eq!(
        vectors.cases.len(),
        4,
        "every vector in the file is checked"
    );
    vectors.cases
}

impl Case {
    /// The case's request, with its nonce and body hash as given.
    fn request<'a>(&'a self, nonce: &'a [u8; 16], body_hash: &'a [u8; 32]) -> RequestToSign<'a> {
        RequestToSign {
            method: &self.method,
            target: &self.target,
            device_id: &self.device_id,
            timestamp_ms: self.timestamp_ms,
            nonce,
            body_sha256: body_hash,
        }
    }
}

fn hex_of(bytes: &[u8; 32]) -> String {
    let text: [u8; 64] = lower_hex(bytes);
    String::from_utf8(text.to_vec()).unwrap()
}

#[test]
fn every_vector_request_canonical_text_and_signature_match_byte_for_byte() {
    for case in cases() {
        let secret = DeviceSecret::parse(&case.secret).expect("vector secret parses");
        assert_eq!(hex::encode(secret.expose_bytes()), case.secret_hex);
        let nonce = parse_lower_hex::<16>(&case.nonce_hex).expect("vector nonce");
        let body_hash = body_sha256(case.body.as_bytes());
        assert_eq!(hex_of(&body_hash), case.body_sha256_hex, "{}", case.target);
        let request = case.request(&nonce, &body_hash);
        let mut canonical = Vec::new();
        request.write_canonical(|part| canonical.extend_from_slice(part));
        assert_eq!(
            hex::encode(&canonical),
            case.canonical_hex,
            "{}",
            case.target
        );
        let signature = request.signature(&secret);
        assert_eq!(hex_of(&signature), case.signature_hex, "{}", case.target);
        let vector = parse_lower_hex::<32>(&case.signature_hex).expect("vector signature");
        assert!(request.verify(&secret, &vector), "{}", case.target);
    }
}

#[test]
fn every_vector_answer_canonical_text_and_signature_match_byte_for_byte() {
    for case in cases() {
        let secret = DeviceSecret::parse(&case.secret).unwrap();
        let nonce = parse_lower_hex::<16>(&case.nonce_hex).unwrap();
        let body_hash = body_sha256(case.answer.body.as_bytes());
        assert_eq!(hex_of(&body_hash), case.answer.body_sha256_hex);
        let answer = AnswerToSign {
            nonce: &nonce,
            status: case.answer.status,
            body_sha256: &body_hash,
        };
        let mut canonical = Vec::new();
        answer.write_canonical(|part| canonical.extend_from_slice(part));
        assert_eq!(hex::encode(&canonical), case.answer.canonical_hex);
        let signature = answer.signature(&secret);
        assert_eq!(hex_of(&signature), case.answer.signature_hex);
        let vector = parse_lower_hex::<32>(&case.answer.signature_hex).unwrap();
        assert!(answer.verify(&secret, &vector));
    }
}

#[test]
fn a_changed_byte_anywhere_in_a_request_fails_its_signature() {
    let case = &cases()[1];
    let secret = DeviceSecret::parse(&case.secret).unwrap();
    let nonce = parse_lower_hex::<16>(&case.nonce_hex).unwrap();
    let body_hash = body_sha256(case.body.as_bytes());
    let signed = case.request(&nonce, &body_hash);
    let signature = signed.signature(&secret);
    let other_nonce = {
        let mut n = nonce;
        n[15] ^= 1;
        n
    };
    let tampered_body = body_sha256(case.body.replace("2351.17", "2351.18").as_bytes());
    let changed = [
        RequestToSign {
            method: "GET",
            ..signed
        },
        RequestToSign {
            target: "/v1/device/reports?",
            ..signed
        },
        RequestToSign {
            device_id: "dv_0000000000000000000000000B",
            ..signed
        },
        RequestToSign {
            timestamp_ms: case.timestamp_ms + 1,
            ..signed
        },
        RequestToSign {
            nonce: &other_nonce,
            ..signed
        },
        RequestToSign {
            body_sha256: &tampered_body,
            ..signed
        },
    ];
    for request in changed {
        assert!(!request.verify(&secret, &signature), "{request:?}");
    }
    let other_secret = DeviceSecret::from_bytes([7; 32]);
    assert!(!signed.verify(&other_secret, &signature));
}

#[test]
fn an_answer_signature_never_passes_for_another_status_nonce_or_body() {
    let case = &cases()[0];
    let secret = DeviceSecret::parse(&case.secret).unwrap();
    let nonce = parse_lower_hex::<16>(&case.nonce_hex).unwrap();
    let body_hash = body_sha256(case.answer.body.as_bytes());
    let answer = AnswerToSign {
        nonce: &nonce,
        status: 200,
        body_sha256: &body_hash,
    };
    let signature = answer.signature(&secret);
    let other_nonce = [0u8; 16];
    let empty = body_sha256(b"");
    for other in [
        AnswerToSign {
            status: 201,
            ..answer
        },
        AnswerToSign {
            nonce: &other_nonce,
            ..answer
        },
        AnswerToSign {
            body_sha256: &empty,
            ..answer
        },
    ] {
        assert!(!other.verify(&secret, &signature));
    }
    // A request's MAC is never an answer's: the first lines differ.
    let request = case.request(&nonce, &body_hash);
    assert!(!answer.verify(&secret, &request.signature(&secret)));
}
