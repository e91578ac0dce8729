//+------------------------------------------------------------------+
//| eagate.mqh: the eagate library for MQL5 (and, through            |
//| eagate4.mqh, MQL4). Copy to MQL5\Include (MQL4\Include), and     |
//| eagate.dll to MQL5\Libraries (MQL4\Libraries).                   |
//|                                                                  |
//| Mirrors include/eagate.h: the same functions, parameter types    |
//| and struct layout (device-sdk-ffi/tests/mql.rs checks it). The   |
//| C harness (tests/c/copier.c) drives the library with exactly     |
//| these calls, buffers and struct against a real gateway.          |
//|                                                                  |
//| Every call returns at once: the session runs inside the DLL.     |
//| Strings go in as MQL strings (UTF-16); text comes out in ushort  |
//| arrays sized by the caller. Signal ids are two ulongs.           |
//+------------------------------------------------------------------+
#property strict

// The signal struct, its constants and helpers, shared with the copiers
// that need no DLL.
#include <eagate_signal.mqh>

// Results (EagateResult). 0 is success, 1 means nothing waits,
// negative values are failures: EagateLastError() says why.
#define EAGATE_RESULT_OK                 0
#define EAGATE_RESULT_NO_SIGNAL          1
#define EAGATE_RESULT_INVALID_ARGUMENT  -1
#define EAGATE_RESULT_BUFFER_TOO_SMALL  -2
#define EAGATE_RESULT_UNKNOWN_HANDLE    -3
#define EAGATE_RESULT_STATE_DIRECTORY   -4
#define EAGATE_RESULT_OUTBOX_FULL       -5
#define EAGATE_RESULT_STOPPED           -6
#define EAGATE_RESULT_INTERNAL         -99

// Session states (EagateState). From 10 up: stopped for good.
#define EAGATE_STATE_CONNECTING           1
#define EAGATE_STATE_CONNECTED            2
#define EAGATE_STATE_BACKING_OFF          3
#define EAGATE_STATE_CLOSED              10
#define EAGATE_STATE_REVOKED             11
#define EAGATE_STATE_CREDENTIALS_REFUSED 12
#define EAGATE_STATE_UNSUPPORTED_VERSION 13
#define EAGATE_STATE_CERTIFICATE_REFUSED 14
#define EAGATE_STATE_REPLACED            15
#define EAGATE_STATE_SECRET_ROTATED      16

// Characters the symbol and comment buffers must hold, NUL included.
#define EAGATE_SYMBOL_CAPACITY  33
#define EAGATE_COMMENT_CAPACITY 65

#import "eagate.dll"
uint eagate_version();
int  eagate_last_error(ushort &buffer[], int capacity);
int  eagate_last_error_utf8(uchar &buffer[], int capacity);
int  eagate_auth_mac(string device_id, string secret, ulong timestamp_ms, const uchar &nonce[], const uchar &binding[], uchar &mac_out[]);
int  eagate_connect(string server, string device_id, string secret, string fingerprint, string state_dir, long &handle_out);
int  eagate_state(long handle, int &state_out);
int  eagate_state_text(long handle, ushort &buffer[], int capacity);
int  eagate_poll_signal(long handle, EagateSignal &signal_out, ushort &symbol[], int symbol_capacity, ushort &comment[], int comment_capacity);
int  eagate_report_received(long handle, ulong signal_id_hi, ulong signal_id_lo);
int  eagate_report_filled(long handle, ulong signal_id_hi, ulong signal_id_lo, ulong ticket, string price, string volume);
int  eagate_report_rejected(long handle, ulong signal_id_hi, ulong signal_id_lo, uint code, string text);
int  eagate_report_reversed(long handle, ulong signal_id_hi, ulong signal_id_lo, ulong ticket);
int  eagate_close(long handle);
int  eagate_handle_last_error(long handle, ushort &buffer[], int capacity);
int  eagate_handle_last_error_utf8(long handle, uchar &buffer[], int capacity);
#import

#define EAGATE_TEXT_CAPACITY 512

// Why the last call on this thread failed.
string EagateLastError()
  {
   ushort buffer[];
   ArrayResize(buffer, EAGATE_TEXT_CAPACITY);
   eagate_last_error(buffer, EAGATE_TEXT_CAPACITY);
   return ShortArrayToString(buffer);
  }

// Why the last call on this session failed.
string EagateHandleError(const long handle)
  {
   ushort buffer[];
   ArrayResize(buffer, EAGATE_TEXT_CAPACITY);
   if(eagate_handle_last_error(handle, buffer, EAGATE_TEXT_CAPACITY) != EAGATE_RESULT_OK)
      return EagateLastError();
   return ShortArrayToString(buffer);
  }

// A sentence on where the session stands, for the log and the chart.
string EagateStateText(const long handle)
  {
   ushort buffer[];
   ArrayResize(buffer, EAGATE_TEXT_CAPACITY);
   eagate_state_text(handle, buffer, EAGATE_TEXT_CAPACITY);
   return ShortArrayToString(buffer);
  }

// The session's state, or -1 if the handle is unknown.
int EagateState(const long handle)
  {
   int state = 0;
   if(eagate_state(handle, state) != EAGATE_RESULT_OK)
      return -1;
   return state;
  }

bool EagateIsStopped(const int state)
  {
   return state >= EAGATE_STATE_CLOSED;
  }

// Takes the next waiting signal: EAGATE_RESULT_OK with the signal,
// EAGATE_RESULT_NO_SIGNAL, or a failure. Call on every timer tick.
int EagatePollSignal(const long handle, EagateSignal &signal, string &symbol, string &comment)
  {
   ushort symbol_units[];
   ushort comment_units[];
   ArrayResize(symbol_units, EAGATE_SYMBOL_CAPACITY);
   ArrayResize(comment_units, EAGATE_COMMENT_CAPACITY);
   int result = eagate_poll_signal(handle, signal, symbol_units, EAGATE_SYMBOL_CAPACITY,
                                   comment_units, EAGATE_COMMENT_CAPACITY);
   if(result == EAGATE_RESULT_OK)
     {
      symbol = ShortArrayToString(symbol_units);
      comment = ShortArrayToString(comment_units);
     }
   return result;
  }

// Fills and rejections not yet stored by the library (outbox full, disk
// trouble), kept in order and handed over again by EagateFlushReports: a
// report is never dropped because one call failed. Lost only if the
// terminal dies before the library takes them.
int    g_eagate_unsent_kind[];   // 1: fill, 2: rejection, 3: reversal
ulong  g_eagate_unsent_hi[];
ulong  g_eagate_unsent_lo[];
ulong  g_eagate_unsent_ticket[];
uint   g_eagate_unsent_code[];
string g_eagate_unsent_price[];
string g_eagate_unsent_volume[];
string g_eagate_unsent_text[];

int EagateQueueReport(const int kind, const ulong hi, const ulong lo)
  {
   int n = ArraySize(g_eagate_unsent_kind);
   ArrayResize(g_eagate_unsent_kind, n + 1);
   ArrayResize(g_eagate_unsent_hi, n + 1);
   ArrayResize(g_eagate_unsent_lo, n + 1);
   ArrayResize(g_eagate_unsent_ticket, n + 1);
   ArrayResize(g_eagate_unsent_code, n + 1);
   ArrayResize(g_eagate_unsent_price, n + 1);
   ArrayResize(g_eagate_unsent_volume, n + 1);
   ArrayResize(g_eagate_unsent_text, n + 1);
   g_eagate_unsent_kind[n] = kind;
   g_eagate_unsent_hi[n] = hi;
   g_eagate_unsent_lo[n] = lo;
   g_eagate_unsent_ticket[n] = 0;
   g_eagate_unsent_code[n] = 0;
   g_eagate_unsent_price[n] = "";
   g_eagate_unsent_volume[n] = "";
   g_eagate_unsent_text[n] = "";
   return n;
  }

// Queues a fill: the terminal's ticket, price and lots as decimal text
// (DoubleToString(price, digits), EagateLotsText(symbol, lots)).
void EagateQueueFill(const ulong hi, const ulong lo, const ulong ticket, const string price, const string volume)
  {
   int n = EagateQueueReport(1, hi, lo);
   g_eagate_unsent_ticket[n] = ticket;
   g_eagate_unsent_price[n] = price;
   g_eagate_unsent_volume[n] = volume;
  }

// Queues a rejection with MetaTrader's error code and its description.
void EagateQueueRejection(const ulong hi, const ulong lo, const uint code, const string text)
  {
   int n = EagateQueueReport(2, hi, lo);
   g_eagate_unsent_code[n] = code;
   g_eagate_unsent_text[n] = text;
  }

// Queues a reversal: the broker undid the signal's fills with this
// ticket (a deal deleted from the history).
void EagateQueueReversal(const ulong hi, const ulong lo, const ulong ticket)
  {
   int n = EagateQueueReport(3, hi, lo);
   g_eagate_unsent_ticket[n] = ticket;
  }

// Hands the queued reports to the library, oldest first; true when none
// is left. Call before polling for new signals.
bool EagateFlushReports(const long handle)
  {
   int n = ArraySize(g_eagate_unsent_kind);
   int done = 0;
   for(; done < n; done++)
     {
      int result;
      if(g_eagate_unsent_kind[done] == 1)
         result = eagate_report_filled(handle, g_eagate_unsent_hi[done], g_eagate_unsent_lo[done],
                                       g_eagate_unsent_ticket[done], g_eagate_unsent_price[done],
                                       g_eagate_unsent_volume[done]);
      else if(g_eagate_unsent_kind[done] == 3)
         result = eagate_report_reversed(handle, g_eagate_unsent_hi[done], g_eagate_unsent_lo[done],
                                         g_eagate_unsent_ticket[done]);
      else
         result = eagate_report_rejected(handle, g_eagate_unsent_hi[done], g_eagate_unsent_lo[done],
                                         g_eagate_unsent_code[done], g_eagate_unsent_text[done]);
      if(result != EAGATE_RESULT_OK)
        {
         Print("eagate: report of ", EagateSignalId(g_eagate_unsent_hi[done], g_eagate_unsent_lo[done]),
               " waits: ", EagateHandleError(handle));
         break;
        }
     }
   if(done > 0)
     {
      // Those handed over leave the queue: the rest move to its front
      // (MQL4 has no ArrayRemove, and this file serves both terminals).
      int left = n - done;
      for(int i = 0; i < left; i++)
        {
         g_eagate_unsent_kind[i] = g_eagate_unsent_kind[done + i];
         g_eagate_unsent_hi[i] = g_eagate_unsent_hi[done + i];
         g_eagate_unsent_lo[i] = g_eagate_unsent_lo[done + i];
         g_eagate_unsent_ticket[i] = g_eagate_unsent_ticket[done + i];
         g_eagate_unsent_code[i] = g_eagate_unsent_code[done + i];
         g_eagate_unsent_price[i] = g_eagate_unsent_price[done + i];
         g_eagate_unsent_volume[i] = g_eagate_unsent_volume[done + i];
         g_eagate_unsent_text[i] = g_eagate_unsent_text[done + i];
        }
      ArrayResize(g_eagate_unsent_kind, left);
      ArrayResize(g_eagate_unsent_hi, left);
      ArrayResize(g_eagate_unsent_lo, left);
      ArrayResize(g_eagate_unsent_ticket, left);
      ArrayResize(g_eagate_unsent_code, left);
      ArrayResize(g_eagate_unsent_price, left);
      ArrayResize(g_eagate_unsent_volume, left);
      ArrayResize(g_eagate_unsent_text, left);
     }
   return done == n;
  }
//+------------------------------------------------------------------+
