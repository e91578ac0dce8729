//! Property tests: every message survives the wire unchanged, a reader fed
//! any prefix waits for exactly the rest, and no input makes decoding panic.

mod common;

use common::*;
use eagate_protocol::*;
use proptest::prelude::*;

fn assert_round_trip<M: WireMessage + PartialEq + std::fmt::Debug>(message: &M) {
    let bytes = frame(message);
    assert!(bytes.len() <= MAX_WIRE_LEN);
    match decode_frame::<M>(&bytes).unwrap() {
        Decoded::Frame {
            message: decoded,
            consumed,
        } => {
            assert_eq!(&decoded, message);
            assert_eq!(consumed, bytes.len());
        }
        Decoded::Incomplete { needed } => panic!("whole frame reported incomplete ({needed})"),
    }
}

fn assert_every_prefix_is_incomplete<M: WireMessage + std::fmt::Debug + PartialEq>(bytes: &[u8]) {
    for cut in 0..bytes.len() {
        assert_eq!(
            decode_frame::<M>(&bytes[..cut]).unwrap(),
            Decoded::Incomplete {
                needed: if cut < FRAME_HEADER_LEN {
                    FRAME_HEADER_LEN - cut
                } else {
                    bytes.len() - cut
                }
            },
            "cut at {cut} of {}",
            bytes.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_device_message_round_trips(message in device_message()) {
        assert_round_trip(&message);
    }

    #[test]
    fn every_gateway_message_round_trips(message in gateway_message()) {
        assert_round_trip(&message);
    }

    #[test]
    fn every_message_round_trips_through_json_as_the_gateway_stores_it(
        device in device_message(),
        gateway in gateway_message(),
    ) {
        let json = serde_json::to_string(&device).unwrap();
        prop_assert_eq!(serde_json::from_str::<DeviceMessage>(&json).unwrap(), device);
        let json = serde_json::to_string(&gateway).unwrap();
        prop_assert_eq!(serde_json::from_str::<GatewayMessage>(&json).unwrap(), gateway);
    }

    #[test]
    fn decimal_scale_survives_the_wire_not_just_the_value(value in decimal()) {
        let mut buf = [0u8; 32];
        let bytes = postcard::to_slice(&value, &mut buf).unwrap();
        let back: Decimal = postcard::from_bytes(bytes).unwrap();
        prop_assert_eq!((back.mantissa(), back.scale()), (value.mantissa(), value.scale()));
    }

    #[test]
    fn decimal_text_round_trips(value in decimal()) {
        let back: Decimal = value.to_string().parse().unwrap();
        prop_assert_eq!((back.mantissa(), back.scale()), (value.mantissa(), value.scale()));
    }

    #[test]
    fn a_reader_with_a_prefix_is_told_exactly_how_much_is_missing(message in device_message()) {
        assert_every_prefix_is_incomplete::<DeviceMessage>(&frame(&message));
    }

    #[test]
    fn frames_back_to_back_decode_one_after_another(
        messages in proptest::collection::vec(gateway_message(), 1..8)
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(frame).collect();
        let mut offset = 0;
        for expected in &messages {
            match decode_frame::<GatewayMessage>(&stream[offset..]).unwrap() {
                Decoded::Frame { message, consumed } => {
                    prop_assert_eq!(&message, expected);
                    offset += consumed;
                }
                Decoded::Incomplete { .. } => prop_assert!(false, "stream cut short"),
            }
        }
        prop_assert_eq!(offset, stream.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_frame::<DeviceMessage>(&bytes);
        let _ = decode_frame::<GatewayMessage>(&bytes);
    }

    #[test]
    fn corrupting_any_byte_of_a_valid_frame_never_panics_and_never_overreads(
        message in device_message(),
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = frame(&message);
        let at = index.index(bytes.len());
        bytes[at] = value;
        if let Ok(Decoded::Frame { consumed, .. }) = decode_frame::<DeviceMessage>(&bytes) {
            prop_assert!(consumed <= bytes.len());
        }
    }
}
