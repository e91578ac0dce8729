//+------------------------------------------------------------------+
//| EagateCopier.mq5: copies eagate trade signals into this terminal |
//| and reports every execution back, exactly once.                  |
//|                                                                  |
//| Install: docs/metatrader.md. Needs "Allow DLL imports".          |
//+------------------------------------------------------------------+
#property copyright "eagate"
#property version   "1.00"
#property strict

#include <eagate.mqh>
// The trade code, shared with EagateHttpCopier.mq5: it reports through
// the three EagateReport... functions at the end of this file.
#include <eagate_trade5.mqh>

input string InpServer      = "gateway.example.com:7443"; // Gateway (host:port)
input string InpDeviceId    = "";                          // Device id (dv_...)
input string InpSecret      = "";                          // Device secret (egs_..., shown once)
input string InpFingerprint = "";                          // Gateway certificate fingerprint (SHA256 ...)
input string InpStateDir    = "eagate";                    // Journal folder under MQL5\Files
input int    InpTimerMs     = 100;                         // Polling interval, ms
input ulong  InpDeviationPoints = 20;                      // Maximum slippage, points

long   g_session = 0;
int    g_state   = 0;

// Set once the library answers STOPPED: no more signals are taken, but the
// handle stays open until the EA is removed, because the library still
// takes reports (kept in the journal for the device's next session) and a
// pending order may fill after the stop.
bool   g_stopped = false;

int OnInit()
  {
   // A change of symbol, timeframe or inputs runs OnDeinit and OnInit
   // again with the globals kept: the new session starts clean (a held
   // signal comes again from the new session, unfinished).
   g_stopped = false;
   g_holding = false;
   g_state = 0;
   if(!TerminalInfoInteger(TERMINAL_DLLS_ALLOWED) || !MQLInfoInteger(MQL_DLLS_ALLOWED))
     {
      Alert("eagate: allow DLL imports (Tools > Options > Expert Advisors, and the EA's Dependencies tab)");
      return INIT_FAILED;
     }
   uint version = eagate_version();
   Print("eagate library ", version >> 16, ".", (version >> 8) & 0xFF, ".", version & 0xFF);
   string state_dir = TerminalInfoString(TERMINAL_DATA_PATH) + "\\MQL5\\Files\\" + InpStateDir;
   int result = eagate_connect(InpServer, InpDeviceId, InpSecret, InpFingerprint, state_dir, g_session);
   if(result != EAGATE_RESULT_OK)
     {
      Alert("eagate: cannot start: ", EagateLastError());
      g_session = 0;
      return INIT_PARAMETERS_INCORRECT;
     }
   g_trade.SetDeviationInPoints(InpDeviationPoints);
   EventSetMillisecondTimer(InpTimerMs);
   return INIT_SUCCEEDED;
  }

void OnDeinit(const int reason)
  {
   EventKillTimer();
   if(g_session != 0)
     {
      // Returns within about 1.7 s whatever the network does; reports not
      // yet confirmed stay in the journal for the next start.
      eagate_close(g_session);
      g_session = 0;
     }
   Comment("");
  }

void OnTimer()
  {
   if(g_session == 0)
      return;
   int state = EagateState(g_session);
   if(state != g_state)
     {
      g_state = state;
      string text = EagateStateText(g_session);
      Print("eagate: ", text);
      Comment("eagate: ", text);
     }
   if(!EagateFlushReports(g_session) || g_stopped)
      return;
   if(g_holding && !Execute(g_held, g_held_symbol, g_held_comment))
      return;
   EagateSignal signal;
   string symbol, comment;
   // A bounded batch per tick keeps the terminal responsive.
   for(int i = 0; i < 32; i++)
     {
      int result = EagatePollSignal(g_session, signal, symbol, comment);
      if(result == EAGATE_RESULT_NO_SIGNAL)
         break;
      if(result == EAGATE_RESULT_STOPPED)
        {
         // The state sentence (left on the chart) says why and what to do.
         // Replaced: the same device id runs on another chart, terminal or
         // VPS, which now has the session; this copy stops for good rather
         // than take it back (two copies would trade every signal twice).
         if(EagateState(g_session) == EAGATE_STATE_REPLACED)
            Alert("eagate: this device connected from elsewhere and took over; "
                  "this EA stopped taking signals. Run it in one place only.");
         else
            Alert("eagate: ", EagateStateText(g_session));
         g_stopped = true;
         return;
        }
      if(result != EAGATE_RESULT_OK)
        {
         Print("eagate: polling failed: ", EagateHandleError(g_session));
         break;
        }
      if(!Execute(signal, symbol, comment))
         break;
     }
  }

// Every deal of an order placed for a signal is reported from here.
void OnTradeTransaction(const MqlTradeTransaction &trans, const MqlTradeRequest &request, const MqlTradeResult &result)
  {
   if(g_session != 0)
      EagateTradeTransaction(trans);
  }

// The reports of the trade code (eagate_trade5.mqh), handed to the library,
// which journals them and sends them over the session.
bool EagateReportReceived(const EagateSignal &s)
  {
   if(eagate_report_received(g_session, s.signal_id_hi, s.signal_id_lo) == EAGATE_RESULT_OK)
      return true;
   Print("eagate: ", EagateHandleError(g_session));
   return false;
  }

void EagateReportFill(const ulong hi, const ulong lo, const ulong ticket, const string price, const string volume)
  {
   EagateQueueFill(hi, lo, ticket, price, volume);
   EagateFlushReports(g_session);
  }

void EagateReportRejection(const ulong hi, const ulong lo, const uint code, const string text)
  {
   EagateQueueRejection(hi, lo, code, text);
   EagateFlushReports(g_session);
  }

void EagateReportReversal(const ulong hi, const ulong lo, const ulong ticket)
  {
   EagateQueueReversal(hi, lo, ticket);
   EagateFlushReports(g_session);
  }
//+------------------------------------------------------------------+
