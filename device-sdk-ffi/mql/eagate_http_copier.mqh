//+------------------------------------------------------------------+
//| eagate_http_copier.mqh: the HTTPS transport of the copiers that  |
//| need no DLL, EagateHttpCopier.mq5 and EagateHttpCopier.mq4.      |
//| Copy to MQL5\Include (MQL4\Include).                             |
//|                                                                  |
//| The EA includes eagate_http.mqh and its terminal's trade code    |
//| (eagate_trade5.mqh or eagate_trade4.mqh) first. This file gives  |
//| the trade code its three report functions, on the EagateHttp     |
//| client, and the EA its start, tick and stop.                     |
//+------------------------------------------------------------------+
#property strict

#ifndef EAGATE_HTTP_COPIER_MQH
#define EAGATE_HTTP_COPIER_MQH

EagateHttp g_client;
int        g_poll_wait_secs = 5;
// Between Start and Stop: trade transactions are reported.
bool       g_running = false;
// Replaced by another copy of this device, or revoked: no more polls or
// reports from this run (queued reports stay in the state file).
bool       g_stopped = false;
// What the chart shows, so each change is printed once.
string     g_shown = "";
// After a failed request, the next waits (1 s, doubling to 30 s), so a
// gateway out of reach is not asked ten times a second.
uint       g_backoff_ms = 0;
uint       g_failed_at = 0;
// Reports that could not be sent wait the same way, on their own: the
// polls go on meanwhile. Why the last try failed, for the chart.
uint       g_flush_backoff_ms = 0;
uint       g_flush_failed_at = 0;
string     g_unsent = "";
// The polled signal the trade code is acting on, for its "received"
// report: the client keeps it with the signal's channel position, in one
// write, so a restart neither loses the report nor takes the signal again.
EagateHttpSignal g_acting;
// Signals the last poll brought, acted on at the next tick: a poll blocks
// the EA, and the trade events that came meanwhile (a pending order's
// fill, a deal) wait in the EA's queue; they run first, so the trade code
// knows of them before it acts on a close or a modify.
EagateHttpSignal g_polled[];
// Answers "refused this device" in a row: a revoked device, or a wrong
// secret, is told once in an alert, not only on the chart.
int        g_refusals = 0;

// OnInit: a change of symbol, timeframe or inputs runs OnDeinit and OnInit
// again with the globals kept, so everything starts clean; the client
// starts from its state file alone. Opening the session waits for the
// first tick, so OnInit never blocks on the network.
int EagateCopierStart(const string url, const string device_id, const string secret, const int poll_wait_secs)
  {
   g_running = false;
   g_stopped = false;
   g_holding = false;
   g_shown = "";
   g_backoff_ms = 0;
   g_flush_backoff_ms = 0;
   g_unsent = "";
   g_refusals = 0;
   ArrayResize(g_polled, 0);
   if(poll_wait_secs < 0 || poll_wait_secs > 30)
     {
      Alert("eagate: a poll waits 0 to 30 seconds");
      return INIT_PARAMETERS_INCORRECT;
     }
   if(!g_client.Init(url, device_id, secret))
     {
      Alert("eagate: cannot start: ", g_client.LastError());
      return INIT_PARAMETERS_INCORRECT;
     }
   g_poll_wait_secs = poll_wait_secs;
   g_running = true;
   if(g_client.Unconfirmed() > 0)
      Print("eagate: ", g_client.Unconfirmed(), " reports from an earlier run wait to be sent");
   EagateCopierShow("connecting to " + url);
   // A tick acts on what the last poll brought, or sends the queued
   // reports and polls once; the poll itself waits for a signal, so the
   // timer only decides how soon the next one starts.
   EventSetMillisecondTimer(100);
   return INIT_SUCCEEDED;
  }

void EagateCopierStop()
  {
   EventKillTimer();
   g_running = false;
   g_client.Close();
   Comment("");
  }

// The EA's OnTimer: the signals of the last poll, in order, if it
// brought any; else reports first (a fill must not wait behind a poll),
// then one poll, whose signals wait for the next tick. Reports that could
// not be sent do not stop the poll: they wait in the state file, and the
// signals (a close among them) keep coming.
void EagateCopierTick()
  {
   if(!g_running || g_stopped)
      return;
   if(ArraySize(g_polled) > 0)
     {
      EagateCopierAct();
      return;
     }
   if(g_backoff_ms > 0 && GetTickCount() - g_failed_at < g_backoff_ms)
      return;
   bool flushed = EagateCopierFlush();
   if(g_client.Stopped())
     {
      EagateCopierFailed();
      return;
     }
   int n = g_client.Poll(g_poll_wait_secs, g_polled);
   if(n < 0)
     {
      ArrayResize(g_polled, 0);
      EagateCopierFailed();
      return;
     }
   g_backoff_ms = 0;
   g_refusals = 0;
   // The gateway answers again: reports that waited out an outage are
   // tried again within a second, not after the back-off the outage built.
   if(g_flush_backoff_ms > 1000)
      g_flush_backoff_ms = 1000;
   EagateCopierShow(flushed ? "connected" : "connected; reports wait: " + g_unsent);
  }

// Sends the queued reports, unless a try failed moments ago (then they
// wait 1 s, doubling to 30 s, as after a failed request): true when none
// is left. A failure holds back the reports only, never the polls.
bool EagateCopierFlush()
  {
   if(g_flush_backoff_ms > 0 && GetTickCount() - g_flush_failed_at < g_flush_backoff_ms)
      return false;
   if(g_client.FlushReports())
     {
      g_flush_backoff_ms = 0;
      g_unsent = "";
      return true;
     }
   g_flush_backoff_ms = g_flush_backoff_ms == 0 ? 1000 : (g_flush_backoff_ms >= 15000 ? (uint)30000 : g_flush_backoff_ms * 2);
   g_flush_failed_at = GetTickCount();
   g_unsent = g_client.LastError();
   return false;
  }

// Acts on each polled signal, in order, then sends what they did at once.
void EagateCopierAct()
  {
   int n = ArraySize(g_polled);
   bool kept = true;
   for(int i = 0; i < n && kept; i++)
     {
      EagateSignal s;
      string why = "";
      g_acting = g_polled[i];
      if(!EagateHttpToSignal(g_polled[i], s, why))
        {
         if(StringFind(why, "signal id ") == 0)
           {
            // No report can name it (the gateway would refuse them all,
            // and hold back every later one): passed over, loudly.
            Alert("eagate: a signal with no valid id was passed over (", why, ")");
            kept = g_client.Skip(g_polled[i]);
            continue;
           }
         // Recorded and refused rather than skipped (a skipped one comes
         // again with every poll) or guessed at.
         Print("eagate: signal ", g_polled[i].signal_id, " is malformed (", why, ")");
         kept = g_client.Received(g_polled[i]);
         if(kept)
            g_client.QueueRejection(g_polled[i].signal_id, 0, "malformed signal: " + why);
         continue;
        }
      // False when its "received" record could not be written: nothing is
      // recorded and nothing traded, and this signal and the rest come
      // again with the next poll.
      kept = Execute(s, g_polled[i].symbol, g_polled[i].comment);
     }
   // The next poll brings again what was not recorded (the state file
   // could not be written: after a pause, as for a failed request).
   ArrayResize(g_polled, 0);
   g_holding = false;
   if(!kept || (!EagateCopierFlush() && g_client.Stopped()))
      EagateCopierFailed();
  }

// A request failed: the client's LastError says why. A replaced or revoked
// device stops for good; anything else is tried again after a pause.
void EagateCopierFailed()
  {
   if(g_client.Stopped())
     {
      g_stopped = true;
      string why = g_client.LastError();
      EagateCopierShow("stopped: " + why);
      // Replaced: the same device id runs on another chart, terminal or
      // VPS, which now has the session; this copy stops for good rather
      // than take it back (two copies would trade every signal twice).
      if(StringFind(why, "replaced by a newer one") >= 0)
         Alert("eagate: this device connected from elsewhere and took over; "
               "this EA stopped taking signals. Run it in one place only.");
      else
         Alert("eagate: ", why);
      return;
     }
   g_backoff_ms = g_backoff_ms == 0 ? 1000 : (g_backoff_ms >= 15000 ? (uint)30000 : g_backoff_ms * 2);
   g_failed_at = GetTickCount();
   // The gateway's one answer to a wrong secret, an unknown device, a
   // revoked one: after three in a row, an alert.
   if(StringFind(g_client.LastError(), "the gateway refused this device") == 0)
     {
      g_refusals++;
      if(g_refusals == 3)
         Alert("eagate: ", g_client.LastError());
     }
   else
      g_refusals = 0;
   EagateCopierShow(g_client.LastError() + " (trying again in " + IntegerToString(g_backoff_ms / 1000) + " s)");
  }

void EagateCopierShow(const string text)
  {
   if(text == g_shown)
      return;
   g_shown = text;
   Print("eagate: ", text);
   Comment("eagate: ", text);
  }

// The reports of the trade code, queued in the client's state file before
// they return (a restart loses none) and sent by the next FlushReports.
bool EagateReportReceived(const EagateSignal &s)
  {
   // The trade code acts on one signal at a time: g_acting is this one.
   return g_client.Received(g_acting);
  }

void EagateReportFill(const ulong hi, const ulong lo, const ulong ticket, const string price, const string volume)
  {
   g_client.QueueFill(EagateSignalId(hi, lo), ticket, price, volume);
  }

void EagateReportRejection(const ulong hi, const ulong lo, const uint code, const string text)
  {
   g_client.QueueRejection(EagateSignalId(hi, lo), code, text);
  }

void EagateReportReversal(const ulong hi, const ulong lo, const ulong ticket)
  {
   g_client.QueueReversal(EagateSignalId(hi, lo), ticket);
  }

#endif
//+------------------------------------------------------------------+
