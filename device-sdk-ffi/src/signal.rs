//! A signal as MQL reads it: one fixed-layout struct of plain numbers, with
//! the symbol and comment copied into caller buffers beside it.

use eagate_protocol::{Action, Decimal, OrderType, Signal, SignalComment, SignalId, Symbol};

/// UTF-16 units a symbol buffer must hold (the longest symbol and the
/// NUL). A symbol of n UTF-8 bytes never needs more than n UTF-16 units.
pub const EAGATE_SYMBOL_CAPACITY: i32 = 33;

/// UTF-16 units a comment buffer must hold (the longest comment and the
/// NUL).
pub const EAGATE_COMMENT_CAPACITY: i32 = 65;

const _: () = assert!(EAGATE_SYMBOL_CAPACITY as usize == Symbol::MAX_LEN + 1);
const _: () = assert!(EAGATE_COMMENT_CAPACITY as usize == SignalComment::MAX_LEN + 1);

/// What a signal asks the EA to do.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EagateAction {
    /// Open a long position or place a buy order.
    OpenBuy = 1,
    /// Open a short position or place a sell order.
    OpenSell = 2,
    /// Close (part of) the position opened by the referenced signal.
    Close = 3,
    /// Change price, stop loss or take profit of the referenced signal's
    /// order or position.
    Modify = 4,
    /// Delete the pending order placed by the referenced signal.
    Cancel = 5,
}

/// How an opening order is placed.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EagateOrderType {
    /// At the current market price.
    Market = 1,
    /// A pending order at `price` or better.
    Limit = 2,
    /// A pending order triggered at `price`.
    Stop = 3,
}

/// A trade signal, filled by `eagate_poll_signal`.
///
/// Every 8-byte field comes before every 4-byte one and the size is a
/// multiple of 8, so the layout has no padding: MQL's structs (packed on
/// one byte) and C's natural layout agree, 128 bytes on 32 and 64 bits.
///
/// Prices and volumes are exact decimals, `mantissa / 10^scale` (`0.10` lots
/// is mantissa 10, scale 2); a scale of -1 means the value is absent.
/// Signal ids are 16 bytes shown as 32 hex digits: `hi` holds the first 16
/// digits, `lo` the last 16 (`%016llx%016llx`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EagateSignal {
    /// Its position in its channel: 1, 2, 3, … with no gaps.
    pub position: u64,
    /// The signal's id, first half; reports name it.
    pub signal_id_hi: u64,
    /// The signal's id, second half.
    pub signal_id_lo: u64,
    /// For close, modify and cancel: the id (first half) of the signal
    /// that opened the position or placed the order; see `has_reference`.
    pub reference_hi: u64,
    /// The referenced signal's id, second half.
    pub reference_lo: u64,
    /// Lots; for a close, how much to close (zero closes all).
    pub volume_mantissa: i64,
    /// The limit or stop price (absent for market orders).
    pub price_mantissa: i64,
    /// The stop loss price, if any.
    pub stop_loss_mantissa: i64,
    /// The take profit price, if any.
    pub take_profit_mantissa: i64,
    /// The magic number for the order (MT4 keeps the low 31 bits).
    pub magic: u64,
    /// When the provider issued it, Unix milliseconds (UTC).
    pub issued_at_ms: u64,
    /// After this instant (Unix ms, UTC) the EA must not act on it; 0: no
    /// expiry.
    pub expires_at_ms: u64,
    /// What to do.
    pub action: EagateAction,
    /// How to place an opening order.
    pub order_type: EagateOrderType,
    /// Decimal places of `volume_mantissa`.
    pub volume_scale: i32,
    /// Decimal places of `price_mantissa`; -1: no price.
    pub price_scale: i32,
    /// Decimal places of `stop_loss_mantissa`; -1: no stop loss.
    pub stop_loss_scale: i32,
    /// Decimal places of `take_profit_mantissa`; -1: no take profit.
    pub take_profit_scale: i32,
    /// 1 if `reference_hi`/`reference_lo` name a signal, 0 if not.
    pub has_reference: i32,
    /// Always 0; keeps the size a multiple of 8.
    pub reserved: i32,
}

/// A signal id's two halves, as the struct and the report calls carry it.
pub(crate) fn split_id(id: SignalId) -> (u64, u64) {
    let half = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    (half(&id.0[..8]), half(&id.0[8..]))
}

/// The signal id with these halves.
pub(crate) fn join_id(hi: u64, lo: u64) -> SignalId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&hi.to_be_bytes());
    id[8..].copy_from_slice(&lo.to_be_bytes());
    SignalId(id)
}

fn decimal(value: Option<Decimal>) -> (i64, i32) {
    match value {
        Some(value) => (value.mantissa(), i32::from(value.scale())),
        None => (0, -1),
    }
}

impl From<&Signal> for EagateSignal {
    fn from(signal: &Signal) -> Self {
        let (signal_id_hi, signal_id_lo) = split_id(signal.signal_id);
        let (reference_hi, reference_lo) = signal.reference.map(split_id).unwrap_or((0, 0));
        let (volume_mantissa, volume_scale) = decimal(Some(signal.volume));
        let (price_mantissa, price_scale) = decimal(signal.price);
        let (stop_loss_mantissa, stop_loss_scale) = decimal(signal.stop_loss);
        let (take_profit_mantissa, take_profit_scale) = decimal(signal.take_profit);
        Self {
            position: signal.position,
            signal_id_hi,
            signal_id_lo,
            reference_hi,
            reference_lo,
            volume_mantissa,
            price_mantissa,
            stop_loss_mantissa,
            take_profit_mantissa,
            magic: signal.magic,
            issued_at_ms: signal.issued_at_ms,
            expires_at_ms: signal.expires_at_ms.unwrap_or(0),
            action: match signal.action {
                Action::OpenBuy => EagateAction::OpenBuy,
                Action::OpenSell => EagateAction::OpenSell,
                Action::Close => EagateAction::Close,
                Action::Modify => EagateAction::Modify,
                Action::Cancel => EagateAction::Cancel,
            },
            order_type: match signal.order_type {
                OrderType::Market => EagateOrderType::Market,
                OrderType::Limit => EagateOrderType::Limit,
                OrderType::Stop => EagateOrderType::Stop,
            },
            volume_scale,
            price_scale,
            stop_loss_scale,
            take_profit_scale,
            has_reference: i32::from(signal.reference.is_some()),
            reserved: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn the_layout_has_no_padding_so_mql_packing_agrees() {
        assert_eq!(size_of::<EagateSignal>(), 128);
        assert_eq!(offset_of!(EagateSignal, expires_at_ms), 88);
        assert_eq!(offset_of!(EagateSignal, action), 96);
        assert_eq!(offset_of!(EagateSignal, reserved), 124);
    }

    #[test]
    fn id_halves_read_as_the_hex_people_see() {
        let id: SignalId = "0123456789abcdeffedcba9876543210".parse().unwrap();
        let (hi, lo) = split_id(id);
        assert_eq!(format!("{hi:016x}{lo:016x}"), id.to_string());
        assert_eq!(join_id(hi, lo), id);
    }
}
