//+------------------------------------------------------------------+
//| EagateCopier.mq4: copies eagate trade signals into this MT4      |
//| terminal and reports every execution back, exactly once.         |
//|                                                                  |
//| Install: docs/metatrader.md. Needs "Allow DLL imports".          |
//+------------------------------------------------------------------+
#property copyright "eagate"
#property version   "1.00"
#property strict

#include <stdlib.mqh>
#include <eagate4.mqh>

input string InpServer      = "gateway.example.com:7443"; // Gateway (host:port)
input string InpDeviceId    = "";                          // Device id (dv_...)
input string InpSecret      = "";                          // Device secret (egs_..., shown once)
input string InpFingerprint = "";                          // Gateway certificate fingerprint (SHA256 ...)
input string InpStateDir    = "eagate";                    // Journal folder under MQL4\Files
input int    InpTimerMs     = 100;                         // Polling interval, ms
input int    InpSlippagePoints = 20;                       // Maximum slippage, points

long g_session = 0;
int  g_state   = 0;

// Set once the library answers STOPPED: no more signals are taken, but the
// handle stays open until the EA is removed, because the library still
// takes reports (kept in the journal for the device's next session) and a
// pending order may fill after the stop.
bool g_stopped = false;

// Which ticket each signal opened, so close, modify and cancel signals
// find it; pending ones are reported as filled when they trigger. Kept for
// this run of the EA only.
ulong g_opened_hi[];
ulong g_opened_lo[];
int   g_opened_ticket[];
int   g_opened_pending[];

// A signal whose "received" report the library could not store (outbox
// full, disk trouble): retried before polling again, because polling again
// would finish it unreported.
bool         g_holding = false;
EagateSignal g_held;
string       g_held_symbol;
string       g_held_comment;

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
      Alert("eagate: allow DLL imports (Tools > Options > Expert Advisors, and the EA's Common tab)");
      return INIT_FAILED;
     }
   string state_dir = TerminalInfoString(TERMINAL_DATA_PATH) + "\\MQL4\\Files\\" + InpStateDir;
   int result = eagate_connect(InpServer, InpDeviceId, InpSecret, InpFingerprint, state_dir, g_session);
   if(result != EAGATE_RESULT_OK)
     {
      Alert("eagate: cannot start: ", EagateLastError());
      g_session = 0;
      return INIT_PARAMETERS_INCORRECT;
     }
   EventSetMillisecondTimer(InpTimerMs);
   return INIT_SUCCEEDED;
  }

void OnDeinit(const int reason)
  {
   EventKillTimer();
   if(g_session != 0)
     {
      // Returns within about 1.7 s whatever the network does.
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
   CheckPendingFills();
   if(!EagateFlushReports(g_session) || g_stopped)
      return;
   if(g_holding && !Execute(g_held, g_held_symbol, g_held_comment))
      return;
   EagateSignal signal;
   string symbol, comment;
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

// Acts on a signal. False if its "received" report could not be stored:
// the signal is then held and retried on the next tick.
bool Execute(const EagateSignal &s, const string symbol, const string comment)
  {
   string id = EagateSignalId(s.signal_id_hi, s.signal_id_lo);
   if(eagate_report_received(g_session, s.signal_id_hi, s.signal_id_lo) != EAGATE_RESULT_OK)
     {
      Print("eagate: cannot record signal ", id, " yet: ", EagateHandleError(g_session));
      g_held = s;
      g_held_symbol = symbol;
      g_held_comment = comment;
      g_holding = true;
      return false;
     }
   g_holding = false;
   if(s.expires_at_ms != 0 && (ulong)TimeGMT() * 1000 > s.expires_at_ms)
     {
      Reject(s, 0, "the signal expired before it reached the terminal");
      return true;
     }
   if(!SymbolSelect(symbol, true))
     {
      Reject(s, GetLastError(), "unknown symbol " + symbol);
      return true;
     }
   RefreshRates();
   int    digits = (int)MarketInfo(symbol, MODE_DIGITS);
   double volume = NormalizeVolume(symbol, EagateDecimal(s.volume_mantissa, s.volume_scale));
   double price  = NormalizeDouble(EagateDecimal(s.price_mantissa, s.price_scale), digits);
   double sl     = NormalizeDouble(EagateDecimal(s.stop_loss_mantissa, s.stop_loss_scale), digits);
   double tp     = NormalizeDouble(EagateDecimal(s.take_profit_mantissa, s.take_profit_scale), digits);
   int    ticket = -1;
   bool   done   = false;
   switch(s.action)
     {
      case EAGATE_ACTION_OPEN_BUY:
      case EAGATE_ACTION_OPEN_SELL:
        {
         bool buy = s.action == EAGATE_ACTION_OPEN_BUY;
         int cmd;
         if(s.order_type == EAGATE_ORDER_TYPE_MARKET)
           {
            cmd = buy ? OP_BUY : OP_SELL;
            price = buy ? MarketInfo(symbol, MODE_ASK) : MarketInfo(symbol, MODE_BID);
           }
         else if(s.order_type == EAGATE_ORDER_TYPE_LIMIT)
            cmd = buy ? OP_BUYLIMIT : OP_SELLLIMIT;
         else
            cmd = buy ? OP_BUYSTOP : OP_SELLSTOP;
         ticket = OrderSend(symbol, cmd, volume, price, InpSlippagePoints, sl, tp,
                            EagateComment4(comment), EagateMagic4(s.magic), 0, clrNONE);
         if(ticket < 0)
            break;
         Remember(s.signal_id_hi, s.signal_id_lo, ticket, cmd > OP_SELL);
         if(cmd <= OP_SELL)
            ReportOrderFill(s.signal_id_hi, s.signal_id_lo, ticket, false, 0.0);
         done = true;
         break;
        }
      case EAGATE_ACTION_CLOSE:
        {
         if(!Find(s, ticket))
            return true;
         double lots = s.volume_mantissa == 0 ? OrderLots() : volume;
         double close_price = OrderType() == OP_BUY ? MarketInfo(OrderSymbol(), MODE_BID)
                                                    : MarketInfo(OrderSymbol(), MODE_ASK);
         done = OrderClose(ticket, lots, close_price, InpSlippagePoints, clrNONE);
         if(done)
           {
            ReportOrderFill(s.signal_id_hi, s.signal_id_lo, ticket, true, lots);
            FollowPartialClose(s.reference_hi, s.reference_lo, ticket);
           }
         break;
        }
      case EAGATE_ACTION_MODIFY:
        {
         if(!Find(s, ticket))
            return true;
         // An absent value stays as it is.
         double open = OrderType() > OP_SELL && s.price_scale >= 0 ? price : OrderOpenPrice();
         if(s.stop_loss_scale < 0)
            sl = OrderStopLoss();
         if(s.take_profit_scale < 0)
            tp = OrderTakeProfit();
         done = OrderModify(ticket, open, sl, tp, 0, clrNONE);
         break;
        }
      case EAGATE_ACTION_CANCEL:
         if(!Find(s, ticket))
            return true;
         done = OrderDelete(ticket, clrNONE);
         break;
      default:
         Reject(s, 0, "this copier does not know action " + IntegerToString(s.action));
         return true;
     }
   if(!done)
     {
      int error = GetLastError();
      Reject(s, error, ErrorDescription(error));
     }
   return true;
  }

// Pending orders that became positions since the last tick.
void CheckPendingFills()
  {
   for(int i = 0; i < ArraySize(g_opened_ticket); i++)
     {
      if(g_opened_pending[i] == 0 || !OrderSelect(g_opened_ticket[i], SELECT_BY_TICKET))
         continue;
      if(OrderType() <= OP_SELL)
        {
         ReportOrderFill(g_opened_hi[i], g_opened_lo[i], g_opened_ticket[i], false, 0.0);
         g_opened_pending[i] = 0;
        }
     }
  }

// Selects the open order a close, modify or cancel signal refers to.
bool Find(const EagateSignal &s, int &ticket)
  {
   if(s.has_reference != 0)
      for(int i = 0; i < ArraySize(g_opened_ticket); i++)
         if(g_opened_hi[i] == s.reference_hi && g_opened_lo[i] == s.reference_lo
            && OrderSelect(g_opened_ticket[i], SELECT_BY_TICKET) && OrderCloseTime() == 0)
           {
            ticket = g_opened_ticket[i];
            return true;
           }
   Reject(s, ERR_INVALID_TICKET, "no open order of signal " + EagateSignalId(s.reference_hi, s.reference_lo) + " in this terminal");
   return false;
  }

// MT4 gives what is left after a partial close a new ticket, commented
// "from #<old ticket>": the signal's position lives on under it.
void FollowPartialClose(const ulong hi, const ulong lo, const int closed)
  {
   string mark = "from #" + IntegerToString(closed);
   for(int i = OrdersTotal() - 1; i >= 0; i--)
      if(OrderSelect(i, SELECT_BY_POS, MODE_TRADES) && StringFind(OrderComment(), mark) >= 0)
        {
         Remember(hi, lo, OrderTicket(), false);
         return;
        }
  }

// Reports an order's execution: its open price and lots, or for a close the
// close price and the lots closed.
void ReportOrderFill(const ulong hi, const ulong lo, const int ticket, const bool closing, const double lots)
  {
   if(!OrderSelect(ticket, SELECT_BY_TICKET))
      return;
   int digits = (int)MarketInfo(OrderSymbol(), MODE_DIGITS);
   double price = closing ? OrderClosePrice() : OrderOpenPrice();
   double volume = closing ? lots : OrderLots();
   EagateQueueFill(hi, lo, (ulong)ticket, DoubleToString(price, digits), EagateLotsText(OrderSymbol(), volume));
   EagateFlushReports(g_session);
  }

void Reject(const EagateSignal &s, const int code, const string text)
  {
   Print("eagate: signal ", EagateSignalId(s.signal_id_hi, s.signal_id_lo), " rejected (", code, "): ", text);
   EagateQueueRejection(s.signal_id_hi, s.signal_id_lo, (uint)code, text);
   EagateFlushReports(g_session);
  }

double NormalizeVolume(const string symbol, const double volume)
  {
   double step = MarketInfo(symbol, MODE_LOTSTEP);
   if(step <= 0.0)
      return volume;
   return MathRound(volume / step) * step;
  }

// Records the ticket of a signal, replacing an earlier one.
void Remember(const ulong hi, const ulong lo, const int ticket, const bool pending)
  {
   int n = ArraySize(g_opened_ticket);
   for(int i = 0; i < n; i++)
      if(g_opened_hi[i] == hi && g_opened_lo[i] == lo)
        {
         g_opened_ticket[i] = ticket;
         g_opened_pending[i] = pending ? 1 : 0;
         return;
        }
   ArrayResize(g_opened_hi, n + 1);
   ArrayResize(g_opened_lo, n + 1);
   ArrayResize(g_opened_ticket, n + 1);
   ArrayResize(g_opened_pending, n + 1);
   g_opened_hi[n] = hi;
   g_opened_lo[n] = lo;
   g_opened_ticket[n] = ticket;
   g_opened_pending[n] = pending ? 1 : 0;
  }
//+------------------------------------------------------------------+
