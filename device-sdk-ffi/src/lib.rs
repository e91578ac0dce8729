//! The C library (`eagate.dll` / `libeagate.so`) that MetaTrader 4/5 Expert
//! Advisors import. It is built over the device SDK's client; its exported
//! functions, header and MQL include files are developed in
//! `device-sdk-ffi/`.
#![forbid(unsafe_code)]
