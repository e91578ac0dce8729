use eagate_protocol::{Decimal, DecimalError};

fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

#[test]
fn decimal_text_keeps_mantissa_and_scale_exactly() {
    let price = d("1.08543");
    assert_eq!((price.mantissa(), price.scale()), (108_543, 5));
    assert_eq!(price.to_string(), "1.08543");
    let neg = d("-0.0001");
    assert_eq!((neg.mantissa(), neg.scale()), (-1, 4));
    assert_eq!(neg.to_string(), "-0.0001");
    assert_eq!(d("150").to_string(), "150");
    assert_eq!(d("0.10").to_string(), "0.10");
}

#[test]
fn decimal_extremes_of_i64_parse_and_print() {
    assert_eq!(d("-9223372036854775808").mantissa(), i64::MIN);
    assert_eq!(d("9223372036854775807").mantissa(), i64::MAX);
    assert_eq!(
        Decimal::new(i64::MIN, 18).unwrap().to_string(),
        "-9.223372036854775808"
    );
    assert_eq!(
        "9223372036854775808".parse::<Decimal>(),
        Err(DecimalError::Overflow)
    );
}

#[test]
fn decimal_refuses_anything_but_plain_digits_with_a_clear_error() {
    for (text, error) in [
        ("", DecimalError::MissingDigits),
        ("-", DecimalError::MissingDigits),
        ("1.", DecimalError::MissingDigits),
        (".5", DecimalError::MissingDigits),
        (
            "1e5",
            DecimalError::InvalidCharacter {
                ch: 'e',
                position: 1,
            },
        ),
        (
            "+1",
            DecimalError::InvalidCharacter {
                ch: '+',
                position: 0,
            },
        ),
        (
            "1.2.3",
            DecimalError::InvalidCharacter {
                ch: '.',
                position: 3,
            },
        ),
        (
            " 1",
            DecimalError::InvalidCharacter {
                ch: ' ',
                position: 0,
            },
        ),
        (
            "NaN",
            DecimalError::InvalidCharacter {
                ch: 'N',
                position: 0,
            },
        ),
        ("0.0000000000000000001", DecimalError::ScaleTooLarge(19)),
    ] {
        assert_eq!(text.parse::<Decimal>(), Err(error), "{text:?}");
    }
    assert_eq!(Decimal::new(1, 19), Err(DecimalError::ScaleTooLarge(19)));
}

#[test]
fn decimal_equality_and_order_are_by_value_not_representation() {
    assert_eq!(d("1.5"), d("1.50"));
    assert!(d("1.5") < d("1.51"));
    assert!(d("-2") < d("-1.999999999999999999"));
    assert_eq!(d("1.500").normalized().scale(), 1);
    assert_eq!(d("0.000").normalized(), Decimal::ZERO);
}

#[test]
fn decimal_is_a_json_string_and_a_json_number_is_refused() {
    assert_eq!(serde_json::to_string(&d("1.08543")).unwrap(), "\"1.08543\"");
    assert_eq!(
        serde_json::from_str::<Decimal>("\"0.01\"").unwrap(),
        d("0.01")
    );
    let error = serde_json::from_str::<Decimal>("0.01").unwrap_err();
    assert!(error.to_string().contains("string"), "{error}");
}

#[test]
fn decimal_wire_form_is_zigzag_mantissa_then_scale_byte() {
    let mut buf = [0u8; 16];
    let bytes = postcard::to_slice(&d("-1.5"), &mut buf).unwrap();
    // -15 zigzags to 29; scale 1.
    assert_eq!(bytes, [29, 1]);
}
