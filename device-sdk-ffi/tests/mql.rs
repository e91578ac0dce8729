//! The MQL files against the header and the C harness.
//!
//! MetaEditor (MQL's only compiler) does not run here, so this is what
//! checks `mql/`: every function of `include/eagate.h` is imported by
//! `eagate.mqh` with the MQL types that pass the same bytes, the signal
//! struct has the same fields in the same order and sizes, the constants
//! agree, and the EAs call only functions the C harness (which runs
//! against a real gateway under valgrind) calls too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A parameter as (normalised type, name).
type Param = (String, String);

/// `name -> (return type, parameters)` of the header's functions.
fn header_functions(header: &str) -> BTreeMap<String, (String, Vec<Param>)> {
    let mut functions = BTreeMap::new();
    // At a line's start: not the `#define EAGATE_CALL` lines.
    for chunk in header.split("\nEAGATE_CALL\n").skip(1) {
        let declaration = chunk.split(';').next().unwrap();
        let declaration = declaration.split_whitespace().collect::<Vec<_>>().join(" ");
        let (head, params) = declaration.split_once('(').unwrap();
        let (ret, name) = head.trim().rsplit_once(' ').unwrap();
        let params = params.trim_end_matches(')');
        let params = if params == "void" {
            Vec::new()
        } else {
            params
                .split(',')
                .map(|param| {
                    let param = param.trim();
                    let (ty, name) = param.rsplit_once(' ').unwrap();
                    let pointer = if name.starts_with('*') { " *" } else { "" };
                    (
                        format!("{ty}{pointer}")
                            .replace(" *", "*")
                            .replace("* ", "*"),
                        name.trim_start_matches('*').to_owned(),
                    )
                })
                .collect()
        };
        functions.insert(name.to_owned(), (ret.to_owned(), params));
    }
    functions
}

/// The same from MQL's `#import "eagate.dll"` block.
fn mql_imports(mqh: &str) -> BTreeMap<String, (String, Vec<Param>)> {
    let block = mqh
        .split("#import \"eagate.dll\"")
        .nth(1)
        .expect("an #import \"eagate.dll\" block")
        .split("#import")
        .next()
        .unwrap();
    let mut functions = BTreeMap::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.trim_end_matches(';');
        let (head, params) = line.split_once('(').unwrap();
        let (ret, name) = head.trim().split_once(' ').unwrap();
        let params = params.trim_end_matches(')');
        let params = if params.trim().is_empty() {
            Vec::new()
        } else {
            params
                .split(',')
                .map(|param| {
                    let words: Vec<&str> = param.split_whitespace().collect();
                    let (name, ty) = words.split_last().unwrap();
                    let mut ty = ty.join(" ");
                    let mut name = *name;
                    if let Some(rest) = name.strip_prefix('&') {
                        ty.push_str(" &");
                        name = rest;
                    }
                    if let Some(rest) = name.strip_suffix("[]") {
                        ty.push_str("[]");
                        name = rest;
                    }
                    (ty, name.to_owned())
                })
                .collect()
        };
        functions.insert(name.trim().to_owned(), (ret.trim().to_owned(), params));
    }
    functions
}

/// The MQL type passing the same bytes as a C type.
fn mql_type(c: &str) -> &'static str {
    match c {
        "EagateResult" | "int32_t" => "int",
        "uint32_t" => "uint",
        "int64_t" => "long",
        "uint64_t" => "ulong",
        // MQL passes a string argument as a pointer to its UTF-16 units.
        "const uint16_t*" => "string",
        "uint16_t*" => "ushort &[]",
        "uint8_t*" => "uchar &[]",
        "const uint8_t*" => "const uchar &[]",
        "int64_t*" => "long &",
        "EagateState*" => "int &",
        "struct EagateSignal*" => "EagateSignal &",
        "EagateAction" | "EagateOrderType" => "int",
        other => panic!("no MQL type for C type {other:?}: extend this map"),
    }
}

fn struct_fields<'a>(text: &'a str, open: &str, close: &str) -> Vec<(&'a str, &'a str)> {
    let body = text
        .split(open)
        .nth(1)
        .unwrap_or_else(|| panic!("no {open:?}"))
        .split(close)
        .next()
        .unwrap();
    body.lines()
        .map(str::trim)
        .filter(|l| l.ends_with(';') && !l.starts_with('*') && !l.starts_with("//"))
        .map(|l| {
            let (ty, name) = l
                .trim_end_matches(';')
                .rsplit_once(char::is_whitespace)
                .unwrap();
            (ty.trim(), name.trim())
        })
        .collect()
}

/// Every `EAGATE_…` constant with its value: `#define`s and enum variants.
fn constants(text: &str) -> BTreeMap<String, i64> {
    let mut found = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let line = line.trim_end_matches(',');
        let (name, value) = if let Some(rest) = line.strip_prefix("#define ") {
            match rest.split_once(char::is_whitespace) {
                Some((name, value)) => (name, value.trim()),
                None => continue,
            }
        } else if let Some((name, value)) = line.split_once(" = ") {
            (name, value)
        } else {
            continue;
        };
        if let (true, Ok(value)) = (name.starts_with("EAGATE_"), value.parse::<i64>()) {
            found.insert(name.to_owned(), value);
        }
    }
    found
}

/// The `eagate_…` functions a source calls (outside any `#import` block).
fn calls(source: &str) -> BTreeSet<String> {
    let source = match source.split_once("#import \"eagate.dll\"") {
        Some((before, after)) => format!("{before}{}", after.split_once("#import").unwrap().1),
        None => source.to_owned(),
    };
    let mut called = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(at) = rest.find("eagate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if rest.trim_start().starts_with('(') {
            called.insert(name);
        }
    }
    called
}

#[test]
fn mql_imports_every_header_function_with_types_passing_the_same_bytes() {
    let header = header_functions(&read("include/eagate.h"));
    let imports = mql_imports(&read("mql/eagate.mqh"));
    assert!(header.len() >= 14, "{header:#?}");
    assert_eq!(
        header.keys().collect::<Vec<_>>(),
        imports.keys().collect::<Vec<_>>(),
        "the same functions"
    );
    for (name, (ret, params)) in &header {
        let (mql_ret, mql_params) = &imports[name];
        assert_eq!(mql_type(ret), mql_ret, "{name} returns");
        let expected: Vec<(String, String)> = params
            .iter()
            .map(|(ty, param)| (mql_type(ty).to_owned(), param.clone()))
            .collect();
        assert_eq!(&expected, mql_params, "{name}'s parameters");
    }
}

#[test]
fn mql_signal_struct_has_the_headers_fields_in_order() {
    let header = read("include/eagate.h");
    let mqh = read("mql/eagate_signal.mqh");
    let c = struct_fields(&header, "typedef struct EagateSignal {", "} EagateSignal;");
    let mql = struct_fields(&mqh, "struct EagateSignal\n  {", "  };");
    assert_eq!(c.len(), 20, "{c:?}");
    let c: Vec<(&str, &str)> = c.iter().map(|(ty, name)| (mql_type(ty), *name)).collect();
    assert_eq!(c, mql);
}

#[test]
fn mql_constants_equal_the_headers() {
    let header = constants(&read("include/eagate.h"));
    // eagate.mqh includes eagate_signal.mqh, which holds the signal's.
    let mqh = constants(&(read("mql/eagate.mqh") + &read("mql/eagate_signal.mqh")));
    assert!(header.len() >= 27, "{header:#?}");
    for (name, value) in &header {
        assert_eq!(mqh.get(name), Some(value), "{name}");
    }
}

#[test]
fn mql_code_calls_only_functions_the_c_harness_exercises() {
    let harness: BTreeSet<String> = ["tests/c/copier.c", "tests/c/auth_vectors.c"]
        .iter()
        .flat_map(|file| calls(&read(file)))
        .collect();
    let mut used = BTreeSet::new();
    for file in [
        "mql/eagate.mqh",
        "mql/eagate4.mqh",
        "mql/eagate_signal.mqh",
        "mql/eagate_trade5.mqh",
        "mql/eagate_trade4.mqh",
        "mql/EagateCopier.mq5",
        "mql/EagateCopier.mq4",
    ] {
        let called = calls(&read(file));
        for name in &called {
            assert!(
                harness.contains(name),
                "{file} calls {name}, which no C harness program exercises"
            );
        }
        used.extend(called);
    }
    for needed in [
        "eagate_connect",
        "eagate_poll_signal",
        "eagate_report_received",
        "eagate_report_filled",
        "eagate_report_rejected",
        "eagate_close",
    ] {
        assert!(used.contains(needed), "the MQL side never calls {needed}");
    }
    for (ea, include) in [
        ("mql/EagateCopier.mq5", "#include <eagate.mqh>"),
        ("mql/EagateCopier.mq5", "#include <eagate_trade5.mqh>"),
        ("mql/EagateCopier.mq4", "#include <eagate4.mqh>"),
        ("mql/EagateCopier.mq4", "#include <eagate_trade4.mqh>"),
        ("mql/eagate4.mqh", "#include <eagate.mqh>"),
        ("mql/eagate.mqh", "#include <eagate_signal.mqh>"),
    ] {
        assert!(read(ea).contains(include), "{ea} includes {include}");
    }
    for ea in ["mql/EagateCopier.mq5", "mql/EagateCopier.mq4"] {
        let ea = read(ea);
        for needed in [
            "TERMINAL_DLLS_ALLOWED",
            "EventSetMillisecondTimer",
            "void OnDeinit",
            "eagate_close",
        ] {
            assert!(ea.contains(needed), "{needed}");
        }
    }
}

/// MQL5's built-ins that MQL4 lacks (its array helpers added with build
/// 2000 of MetaTrader 5, and the MQL5 trade and history API): the files
/// MetaTrader 4 compiles must not call them. MetaEditor does not run here,
/// so this list is what stands in for MQL4's compiler.
const MQL5_ONLY: [&str; 12] = [
    "ArrayRemove",
    "ArrayInsert",
    "ArraySwap",
    "ArrayReverse",
    "PositionSelect",
    "PositionGetDouble",
    "HistoryDealSelect",
    "HistorySelect",
    "OrderSendAsync",
    "MqlTradeRequest",
    "MqlTradeResult",
    "CTrade",
];

#[test]
fn the_files_metatrader_4_compiles_use_nothing_only_mql5_has() {
    for file in [
        "mql/eagate.mqh",
        "mql/eagate4.mqh",
        "mql/eagate_signal.mqh",
        "mql/eagate_trade4.mqh",
        "mql/EagateCopier.mq4",
        "mql/eagate_http.mqh",
        "mql/eagate_http_copier.mqh",
        "mql/EagateHttpCopier.mq4",
    ] {
        let code = code_of(file);
        for name in MQL5_ONLY {
            let used = code.match_indices(name).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                let after = code[at + name.len()..].chars().next();
                let part_of_a_name =
                    |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                !part_of_a_name(before) && !part_of_a_name(after)
            });
            assert!(!used, "{file} uses {name}, which MQL4 does not have");
        }
    }
}

/// `source` without its `//` comments, so that what the checks below look
/// for is code, not an explanation of it.
fn code_of(file: &str) -> String {
    read(file)
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The body of the MQL function whose definition starts with `signature`:
/// from it to the next definition at the start of a line.
fn function_body<'a>(code: &'a str, signature: &str) -> &'a str {
    let start = code
        .find(signature)
        .unwrap_or_else(|| panic!("{signature} is defined"));
    let rest = &code[start + signature.len()..];
    let end = ["\nvoid ", "\nbool ", "\nint ", "\ndouble ", "\nstring "]
        .iter()
        .filter_map(|next| rest.find(next))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn the_mt5_copier_reports_market_fills_from_the_trade_result_never_the_lagging_history() {
    for file in [
        "mql/eagate_trade5.mqh",
        "mql/EagateCopier.mq5",
        "mql/EagateHttpCopier.mq5",
    ] {
        let code = code_of(file);
        for lagging in ["HistoryDealSelect", "HistoryDealGet", "HistorySelect"] {
            assert!(
                !code.contains(lagging),
                "{file}: a fill must not wait on the terminal's history ({lagging})"
            );
        }
    }
    let code = code_of("mql/eagate_trade5.mqh");
    let execute = function_body(&code, "bool Execute(");
    for from_the_result in ["ResultDeal()", "ResultPrice()", "ResultVolume()"] {
        assert!(execute.contains(from_the_result), "{from_the_result}");
    }
    // Deals the result did not carry come as transactions, reported there
    // from the transaction's own price and volume.
    let transaction = function_body(&code, "void EagateTradeTransaction(");
    assert!(transaction.contains("TRADE_TRANSACTION_DEAL_ADD"));
    assert!(transaction.contains("trans.price") && transaction.contains("trans.volume"));
    // Both paths report through one function that skips a deal it reported.
    let report = function_body(&code, "void ReportFill(");
    assert!(report.contains("g_reported_deal[i] == deal"));
    assert_eq!(code.matches("EagateReportFill(").count(), 1);
    // Both MT5 copiers pass their transactions to it.
    for ea in ["mql/EagateCopier.mq5", "mql/EagateHttpCopier.mq5"] {
        let ea = code_of(ea);
        assert!(
            function_body(&ea, "void OnTradeTransaction(")
                .contains("EagateTradeTransaction(trans)")
        );
    }
}

#[test]
fn the_mt5_copiers_report_a_reported_deal_the_broker_deletes_as_reversed_once() {
    let code = code_of("mql/eagate_trade5.mqh");
    let transaction = function_body(&code, "void EagateTradeTransaction(");
    assert!(transaction.contains("TRADE_TRANSACTION_DEAL_DELETE"));
    assert!(transaction.contains("ReportReversal(trans.deal)"));
    // A reported deal keeps its signal beside it, which the reversal names
    // and then clears, so a second deletion reports nothing.
    let fill = function_body(&code, "void ReportFill(");
    assert!(fill.contains("g_reported_hi[slot] = hi;"));
    assert!(fill.contains("g_reported_lo[slot] = lo;"));
    let reversal = function_body(&code, "void ReportReversal(");
    let reported = reversal
        .find("EagateReportReversal(g_reported_hi[i], g_reported_lo[i], deal);")
        .expect("reports the deal's signal and ticket");
    let cleared = reversal
        .find("g_reported_hi[i] = 0;")
        .expect("clears the signal");
    assert!(reported < cleared);
    // Its lots leave the signal's count, so a later close of the signal
    // does not close other signals' lots on a netting account.
    assert!(
        reversal.contains(
            "AddLots(g_reported_lots_hi[i], g_reported_lots_lo[i], -g_reported_lots[i]);"
        )
    );
    assert!(fill.contains(
        "AddLots(g_reported_lots_hi[slot], g_reported_lots_lo[slot], g_reported_lots[slot]);"
    ));
    assert!(reversal.contains("g_reported_hi[i] == 0 && g_reported_lo[i] == 0"));
    // Each MT5 copier queues it where a restart does not lose it.
    let dll = code_of("mql/EagateCopier.mq5");
    assert!(function_body(&dll, "void EagateReportReversal(").contains("EagateQueueReversal("));
    let queue = code_of("mql/eagate.mqh");
    assert!(function_body(&queue, "bool EagateFlushReports(").contains("eagate_report_reversed("));
    let http = code_of("mql/eagate_http.mqh");
    assert!(http.contains(r#"\"kind\":\"reversed\",\"ticket\":\""#));
}

#[test]
fn the_mt5_copier_closes_part_of_a_netting_position_with_an_opposite_deal() {
    let code = code_of("mql/eagate_trade5.mqh");
    let execute = function_body(&code, "bool Execute(");
    let close = &execute[execute.find("case EAGATE_ACTION_CLOSE").expect("close")
        ..execute.find("case EAGATE_ACTION_MODIFY").expect("modify")];
    let partial = close.find("PositionClosePartial").expect("partial close");
    let hedging = close
        .find("ACCOUNT_MARGIN_MODE_RETAIL_HEDGING")
        .expect("the account's margin mode is checked");
    assert!(hedging < partial, "PositionClosePartial only on hedging");
    let opposite = &close[partial..];
    // No stops on the opposite order: the position's are on the wrong side
    // for it; they are put back after the report.
    assert!(opposite.contains("g_trade.Sell(volume, traded, 0.0, 0.0, 0.0"));
    assert!(opposite.contains("g_trade.Buy(volume, traded, 0.0, 0.0, 0.0"));
    assert!(execute.contains("g_trade.PositionModify(ticket, restore_sl, restore_tp)"));
    assert!(
        close.contains("double held = PositionGetDouble(POSITION_VOLUME);")
            && close.contains("volume >= held"),
        "an opposite deal never exceeds the position (it would reverse it)"
    );
    // One netting position holds every signal's lots on its symbol: a whole
    // close closes the referenced signal's lots, counted from its fills.
    assert!(close.contains("LotsOf(s.reference_hi, s.reference_lo)"));
    let report = function_body(&code, "void ReportFill(");
    assert!(report.contains("g_reported_lots_hi[slot] = hi;"));
    assert!(report.contains("g_reported_lots_hi[slot] = g_close_ref_hi[closing];"));
    assert!(report.contains("g_reported_lots[slot] = -lots;"));
    assert!(report.contains("g_reported_lots[slot] = lots;"));
}

#[test]
fn the_copiers_start_each_init_clean_because_metatrader_keeps_globals_across_it() {
    for ea in ["mql/EagateCopier.mq5", "mql/EagateCopier.mq4"] {
        let code = code_of(ea);
        let init = function_body(&code, "int OnInit(");
        for reset in ["g_stopped = false;", "g_holding = false;", "g_state = 0;"] {
            assert!(init.contains(reset), "{ea}: {reset}");
        }
    }
    let transport = code_of("mql/eagate_http_copier.mqh");
    let start = function_body(&transport, "int EagateCopierStart(");
    for reset in [
        "g_running = false;",
        "g_stopped = false;",
        "g_holding = false;",
        "g_backoff_ms = 0;",
    ] {
        assert!(start.contains(reset), "{reset}");
    }
    for ea in ["mql/EagateHttpCopier.mq5", "mql/EagateHttpCopier.mq4"] {
        assert!(function_body(&code_of(ea), "int OnInit(").contains("return EagateCopierStart("));
    }
}

#[test]
fn the_mt5_copier_rejects_a_modify_of_a_vanished_position_with_its_own_reason() {
    let code = code_of("mql/eagate_trade5.mqh");
    let execute = function_body(&code, "bool Execute(");
    let modify = &execute[execute.find("case EAGATE_ACTION_MODIFY").expect("modify")
        ..execute.find("case EAGATE_ACTION_CANCEL").expect("cancel")];
    let gone = &modify[modify
        .rfind("else")
        .expect("neither a position nor an order")..];
    assert!(gone.contains("Reject(s, ERR_TRADE_POSITION_NOT_FOUND"));
    assert!(gone.contains("return true;"), "not the stale retcode below");
    // A request CTrade refused before sending leaves the previous retcode
    // in the result: the rejection then names the terminal's error.
    assert!(execute.contains("if(!sent && (retcode == 0 || succeeded))"));
}

#[test]
fn the_copiers_keep_their_handle_after_stopped_so_later_fills_are_still_recorded() {
    for ea in ["mql/EagateCopier.mq5", "mql/EagateCopier.mq4"] {
        let code = code_of(ea);
        assert_eq!(
            code.matches("eagate_close(").count(),
            1,
            "{ea}: closed in one place"
        );
        assert!(function_body(&code, "void OnDeinit(").contains("eagate_close("));
        let timer = function_body(&code, "void OnTimer(");
        let stopped = &timer[timer.find("EAGATE_RESULT_STOPPED").expect("stopped")..];
        assert!(stopped.contains("g_stopped = true;"), "{ea}");
        assert!(
            !stopped[..stopped.find("return;").expect("return")].contains("g_session = 0"),
            "{ea} keeps its handle"
        );
        // Polling ends once stopped; queued reports are still handed over.
        assert!(timer.contains("if(!EagateFlushReports(g_session) || g_stopped)"));
    }
}

#[test]
fn fills_report_lots_with_the_symbols_volume_step_not_rounded_to_hundredths() {
    for trade in ["mql/eagate_trade5.mqh", "mql/eagate_trade4.mqh"] {
        let code = code_of(trade);
        assert!(code.contains("EagateLotsText("), "{trade}");
    }
    for file in [
        "mql/eagate_trade5.mqh",
        "mql/eagate_trade4.mqh",
        "mql/EagateCopier.mq5",
        "mql/EagateCopier.mq4",
        "mql/eagate_http_copier.mqh",
    ] {
        assert!(
            !code_of(file).contains(", 2))"),
            "{file} rounds lots to two decimals"
        );
    }
    let library = code_of("mql/eagate_signal.mqh");
    assert!(function_body(&library, "string EagateLotsText(").contains("SYMBOL_VOLUME_STEP"));
}

/// The blocks between `// twin begin: NAME` and `// twin end`, by name.
fn twins(file: &str) -> BTreeMap<String, String> {
    let text = read(file);
    let mut found = BTreeMap::new();
    for block in text.split("// twin begin: ").skip(1) {
        let (name, rest) = block.split_once('\n').unwrap();
        let (body, _) = rest
            .split_once("// twin end")
            .unwrap_or_else(|| panic!("{file}: twin {name} has no end"));
        let previous = found.insert(name.trim().to_owned(), body.to_owned());
        assert!(previous.is_none(), "{file}: twin {name} twice");
    }
    found
}

/// Code as a list of tokens, with each language's spelling of references
/// set aside: C's `*p`, `&x`, `p->f` and `const char *` are MQL's `&p[]`,
/// `x`, `p.f` and `string`. Binary `&` and `*` (written with spaces) stay.
fn twin_tokens(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("->", ".")
        .replace("[]", "");
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(if word == "string" {
                "char".to_owned()
            } else {
                word
            });
        } else if c == '"' || c == '\'' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            tokens.push(chars[start..i].iter().collect());
        } else if (c == '&' || c == '*')
            && chars
                .get(i + 1)
                .is_some_and(|next| next.is_alphabetic() || *next == '_')
            // After an operand it is an operator however it is spaced.
            && !(i > 0 && (chars[i - 1].is_alphanumeric() || matches!(chars[i - 1], '_' | ')' | ']')))
        {
            // A reference or pointer sigil, not an operator.
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

#[test]
fn the_mql_http_signing_code_is_token_for_token_the_c_reference_that_the_tests_run() {
    let mql = twins("mql/eagate_http.mqh");
    let c = twins("mql/reference/eagate_http_ref.c");
    assert_eq!(
        mql.keys().collect::<Vec<_>>(),
        c.keys().collect::<Vec<_>>(),
        "the same functions are twinned in both files"
    );
    for name in [
        "eagate_hmac_sha256",
        "eagate_sign_request",
        "eagate_verify_answer",
        "eagate_make_nonce",
        "eagate_parse_secret",
        "eagate_parse_decimal",
        "eagate_parse_signal_id",
        "eagate_parse_unsigned",
    ] {
        assert!(mql.contains_key(name), "{name} is twinned");
    }
    for (name, mql_code) in &mql {
        let (mql_tokens, c_tokens) = (twin_tokens(mql_code), twin_tokens(&c[name]));
        if let Some(at) = (0..mql_tokens.len().max(c_tokens.len()))
            .find(|&i| mql_tokens.get(i) != c_tokens.get(i))
        {
            let around = |tokens: &[String]| {
                tokens[at.saturating_sub(8)..(at + 8).min(tokens.len())].join(" ")
            };
            panic!(
                "twin {name} differs at token {at}:\n  MQL: {}\n  C:   {}",
                around(&mql_tokens),
                around(&c_tokens)
            );
        }
    }
}

#[test]
fn the_twin_check_sees_a_change_of_one_token() {
    let c = twin_tokens("int f(const uchar *a, int n) { return a[n] & 15; }");
    let mql = twin_tokens("int f(const uchar &a[], int n) { return a[n] & 15; }");
    assert_eq!(c, mql);
    assert_ne!(
        c,
        twin_tokens("int f(const uchar &a[], int n) { return a[n] | 15; }")
    );
    assert_ne!(
        c,
        twin_tokens("int f(const uchar &a[], int n) { return a[n] & 16; }")
    );
    assert_ne!(twin_tokens("x = a*b;"), twin_tokens("x = a&b;"));
    assert_eq!(
        twin_tokens("void g(EagateText *c) { c->len = 0; h(&c2, \"x y\"); }"),
        twin_tokens("void g(EagateText &c) { c.len = 0; h(c2, \"x y\"); }")
    );
}

/// `file` and every file of this project it includes, directly or not
/// (`#include <name>` names a file in `mql/`; MetaTrader's own, such as
/// `Trade\Trade.mqh`, are not followed).
fn reached_from(file: &str) -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    let mut waiting = vec![file.to_owned()];
    while let Some(next) = waiting.pop() {
        if !reached.insert(next.clone()) {
            continue;
        }
        for line in code_of(&next).lines() {
            let Some(name) = line
                .trim()
                .strip_prefix("#include <")
                .and_then(|rest| rest.strip_suffix('>'))
            else {
                continue;
            };
            let ours = format!("mql/{name}");
            if Path::new(env!("CARGO_MANIFEST_DIR")).join(&ours).exists() {
                waiting.push(ours);
            }
        }
    }
    reached
}

/// How many times `signature` starts a definition in these files.
fn definitions(files: &BTreeSet<String>, signature: &str) -> usize {
    files
        .iter()
        .map(|file| {
            code_of(file)
                .lines()
                .filter(|line| line.starts_with(signature))
                .count()
        })
        .sum()
}

#[test]
fn the_copiers_without_a_dll_import_nothing_and_trade_with_the_dll_copiers_code() {
    let dll_functions = header_functions(&read("include/eagate.h"));
    for (http, dll, trade) in [
        (
            "mql/EagateHttpCopier.mq5",
            "mql/EagateCopier.mq5",
            "mql/eagate_trade5.mqh",
        ),
        (
            "mql/EagateHttpCopier.mq4",
            "mql/EagateCopier.mq4",
            "mql/eagate_trade4.mqh",
        ),
    ] {
        let without = reached_from(http);
        let with = reached_from(dll);
        // MetaTrader asks for "Allow DLL imports" for any program with an
        // #import of a DLL, called or not: none may be reached.
        for file in &without {
            let code = code_of(file);
            assert!(
                !code.contains("#import"),
                "{http} reaches {file}, which imports"
            );
            for name in dll_functions.keys() {
                assert!(
                    !code.contains(name.as_str()),
                    "{http} reaches {file}, which calls {name}"
                );
            }
            assert!(!code.contains("DLLS_ALLOWED"), "{file} asks for DLLs");
        }
        assert!(!without.contains("mql/eagate.mqh") && !without.contains("mql/eagate4.mqh"));
        assert!(with.contains("mql/eagate.mqh"), "{dll}");
        // One trade code for both transports: the same file, defining the
        // trading once, and no copier with trading of its own.
        assert!(without.contains(trade) && with.contains(trade), "{trade}");
        for files in [&without, &with] {
            assert_eq!(definitions(files, "bool Execute("), 1, "{files:?}");
            assert_eq!(definitions(files, "void Reject("), 1, "{files:?}");
            // Each copier gives the trade code its three reports once.
            for hook in [
                "bool EagateReportReceived(",
                "void EagateReportFill(",
                "void EagateReportRejection(",
            ] {
                assert_eq!(definitions(files, hook), 1, "{hook} in {files:?}");
            }
        }
        assert_eq!(
            definitions(&BTreeSet::from([trade.to_owned()]), "bool Execute("),
            1
        );
        // The trade code stores a signal's "received" report before it
        // trades: a restart mid-way finds the signal recorded, not traded
        // twice.
        let execute = function_body_of(trade, "bool Execute(");
        let recorded = execute.find("EagateReportReceived(s)").expect("received");
        let traded = ["g_trade.", "OrderSend("]
            .iter()
            .filter_map(|call| execute.find(call))
            .min()
            .expect("it trades");
        assert!(recorded < traded, "{trade}");
    }
}

fn function_body_of(file: &str, signature: &str) -> String {
    function_body(&code_of(file), signature).to_owned()
}

#[test]
fn the_https_copier_sends_reports_before_it_polls_and_records_each_signal_before_trading_it() {
    let transport = code_of("mql/eagate_http_copier.mqh");
    let tick = function_body(&transport, "void EagateCopierTick(");
    // A poll's signals wait for the next tick, so the trade events that
    // came during the poll (queued behind it) reach the trade code first.
    let act = tick.find("EagateCopierAct()").expect("acts");
    let flushed = tick.find("EagateCopierFlush()").expect("flush");
    let polled = tick
        .find("g_client.Poll(g_poll_wait_secs, g_polled)")
        .expect("poll");
    assert!(
        act < flushed && flushed < polled,
        "signals, else reports, then the poll"
    );
    assert!(!tick[polled..].contains("Execute("));
    // Reports that cannot be sent stop nothing but a stopped client: the
    // poll goes on, and signals keep coming.
    let between = &tick[flushed..polled];
    assert!(tick.contains("bool flushed = EagateCopierFlush();"));
    // A flush that fails waits (1 s, doubling to 30 s) on its own.
    let flush = function_body(&transport, "bool EagateCopierFlush(");
    let waiting = flush
        .find("GetTickCount() - g_flush_failed_at < g_flush_backoff_ms")
        .expect("waits");
    assert!(waiting < flush.find("g_client.FlushReports()").expect("sends"));
    assert!(flush.contains("(uint)30000"));
    // A poll answered ends the back-off an outage built: within a second.
    let answered = &tick[polled..];
    assert!(answered.contains("if(g_flush_backoff_ms > 1000)\n      g_flush_backoff_ms = 1000;"));
    assert!(between.contains("if(g_client.Stopped())"));
    assert!(
        !between.contains("if(!flushed"),
        "a failed flush must not skip the poll"
    );
    let acting = function_body(&transport, "void EagateCopierAct(");
    let converted = acting.find("EagateHttpToSignal(").expect("converted");
    let executed = acting.find("Execute(s,").expect("executed");
    assert!(converted < executed);
    assert!(acting[..converted].contains("g_acting = g_polled[i];"));
    // The "received" record decides: not written, nothing is traded, and
    // the rest of the batch waits for the next poll (no position moved).
    assert!(
        function_body(&transport, "bool EagateReportReceived(")
            .contains("return g_client.Received(g_acting);")
    );
    assert!(acting.contains("i < n && kept"));
    assert!(acting.contains("kept = Execute(s,"));
    assert!(acting.contains("if(!kept || (!EagateCopierFlush() && g_client.Stopped()))"));
    let client = code_of("mql/eagate_http.mqh");
    let received = function_body(&client, "bool EagateHttp::Received(");
    let undone = &received[received.find("return true;").expect("kept")..];
    for undo in [
        "m_next_seq--;",
        "ArrayCopy(m_channels, channels);",
        "return false;",
    ] {
        assert!(undone.contains(undo), "{undo}");
    }
    // A signal it cannot read is recorded and refused, not skipped (a
    // skipped one comes again with every poll) and not guessed at; one
    // without a valid id, which no report can name, is passed over.
    let malformed = &acting[converted..executed];
    assert!(malformed.contains("kept = g_client.Received(g_polled[i]);"));
    assert!(malformed.contains("g_client.QueueRejection(g_polled[i].signal_id"));
    assert!(malformed.contains("kept = g_client.Skip(g_polled[i]);"));
    // Fills and rejections go to the client's queue, kept in its file.
    assert!(function_body(&transport, "void EagateReportFill(").contains("g_client.QueueFill("));
    assert!(
        function_body(&transport, "void EagateReportRejection(")
            .contains("g_client.QueueRejection(")
    );
    assert!(
        function_body(&transport, "void EagateReportReversal(").contains("g_client.QueueReversal(")
    );
    // Replaced or revoked stops for good; anything else backs off.
    let failed = function_body(&transport, "void EagateCopierFailed(");
    let stopped = &failed[..failed.find("return;").expect("return")];
    assert!(stopped.contains("g_client.Stopped()") && stopped.contains("g_stopped = true;"));
    assert!(failed.contains("30000"), "backs off up to 30 s");
    assert!(tick.contains("GetTickCount() - g_failed_at < g_backoff_ms"));
    // One EA per device in a terminal: the client holds a lock file.
    let init = function_body(&client, "bool EagateHttp::Init(");
    assert!(init.contains(".lock\", FILE_WRITE | FILE_BIN)"));
    assert!(function_body(&transport, "void EagateCopierStop(").contains("g_client.Close();"));
    // MT4 has no trade transactions: pending fills are looked for first.
    let mt4 = code_of("mql/EagateHttpCopier.mq4");
    let timer = function_body(&mt4, "void OnTimer(");
    assert!(timer.find("CheckPendingFills()").unwrap() < timer.find("EagateCopierTick()").unwrap());
}

#[test]
fn a_polled_signal_becomes_the_dll_struct_through_the_twinned_parsers_only() {
    let client = code_of("mql/eagate_http.mqh");
    let convert = function_body(&client, "bool EagateHttpToSignal(");
    assert!(
        convert.contains("eagate_parse_signal_id(h.signal_id, s.signal_id_hi, s.signal_id_lo)")
    );
    assert!(
        convert.contains("eagate_parse_signal_id(h.reference, s.reference_hi, s.reference_lo)")
    );
    assert!(convert.contains("s.has_reference = 1;"));
    for field in ["volume", "price", "stop_loss", "take_profit"] {
        assert!(
            convert.contains(&format!(
                "EagateHttpDecimal(h.{field}, s.{field}_mantissa, s.{field}_scale)"
            )),
            "{field}"
        );
    }
    let decimal = function_body(&client, "bool EagateHttpDecimal(");
    assert!(
        decimal.contains("scale = -1;")
            && decimal.contains("eagate_parse_decimal(text, mantissa, scale)")
    );
    // Every action and order type the protocol names, to the header's
    // constants (checked equal to include/eagate.h above).
    for (name, constant) in [
        ("OpenBuy", "EAGATE_ACTION_OPEN_BUY"),
        ("OpenSell", "EAGATE_ACTION_OPEN_SELL"),
        ("Close", "EAGATE_ACTION_CLOSE"),
        ("Modify", "EAGATE_ACTION_MODIFY"),
        ("Cancel", "EAGATE_ACTION_CANCEL"),
        ("Market", "EAGATE_ORDER_TYPE_MARKET"),
        ("Limit", "EAGATE_ORDER_TYPE_LIMIT"),
        ("Stop", "EAGATE_ORDER_TYPE_STOP"),
    ] {
        let at = convert
            .find(&format!("== \"{name}\")"))
            .unwrap_or_else(|| panic!("{name}"));
        let assigned = convert[at..].lines().nth(1).unwrap_or("");
        assert!(assigned.contains(constant), "{name}: {assigned}");
    }
    for field in ["position", "issued_at_ms", "expires_at_ms"] {
        assert!(
            convert.contains(&format!("s.{field} = h.{field};")),
            "{field}"
        );
    }
    // A magic number is a full ulong, which StringToInteger cannot read.
    assert!(convert.contains("eagate_parse_unsigned(h.magic, s.magic)"));
    // What the trade code does not know is refused by name, never traded
    // as something else (it places any order type but two as a Stop).
    assert!(convert.contains("why = \"action \" + h.action"));
    assert!(convert.contains("why = \"order type \" + h.order_type;"));
}

#[test]
fn the_https_client_keeps_its_state_file_whole_and_a_refused_report_holds_back_no_later_one() {
    let client = code_of("mql/eagate_http.mqh");
    // Written whole, read back, and moved over the old file; a new file cut
    // short or not moved is deleted, so no restart takes it for the newest.
    let save = function_body(&client, "bool EagateHttp::SaveState(");
    let ended = save.find("\"end\\n\"").expect("the end line");
    let moved = save
        .find("if(Complete(temporary) && FileMove(temporary, 0, m_state_file, FILE_REWRITE))")
        .expect("moved only whole");
    let deleted = save.find("FileDelete(temporary);").expect("deleted");
    assert!(ended < moved && moved < deleted);
    assert!(
        function_body(&client, "bool EagateHttp::Complete(").contains("return last == \"end\";")
    );
    // At start, beside a whole state file, a whole new file is a crash
    // between writing and moving it: of its change only fills, rejections
    // and reversals queued after the state file's are kept (numbered on
    // from its next number, each once); a "received" is not (the EA had
    // not traded the signal). A first start writes the state file at once.
    let load = function_body(&client, "void EagateHttp::LoadState(");
    let crashed = load
        .find("if(ReadState(temporary))")
        .expect("the new file read");
    let state = load
        .find("if(!ReadState(m_state_file))")
        .expect("the state file");
    assert!(crashed < state);
    let kept = &load[state..];
    assert!(kept.contains("SaveState();\n        }\n      return;"));
    assert!(kept.contains(
        "made_seq[j] != m_next_seq || StringFind(made_fields[j], \"\\\"kind\\\":\\\"received\\\"\") >= 0"
    ));
    assert!(kept.contains("m_queue_at[i] == made_at[j] && m_queue_fields[i] == made_fields[j]"));
    assert!(kept.contains("m_next_seq = made_seq[j] + 1;"));
    assert!(kept.contains("FileDelete(temporary);"));
    // A report set aside as malformed leaves no hole in the numbers: the
    // gateway confirms only up to its first missing one.
    let aside = function_body(&client, "bool EagateHttp::SetAside(");
    assert!(aside.contains("m_queue_seq[i] = m_queue_seq[i + 1] - 1;"));
    assert!(aside.contains("m_next_seq--;"));
}
