//+------------------------------------------------------------------+
//| EagateCopier.mq5: copies eagate trade signals into this terminal |
//| and reports every execution back, exactly once.                  |
//|                                                                  |
//| Install: docs/metatrader.md. Needs "Allow DLL imports".          |
//+------------------------------------------------------------------+
#property copyright "eagate"
#property version   "1.00"
#property strict

#include <Trade\Trade.mqh>
#include <eagate.mqh>

input string InpServer      = "gateway.example.com:7443"; // Gateway (host:port)
input string InpDeviceId    = "";                          // Device id (dv_...)
input string InpSecret      = "";                          // Device secret (egs_..., shown once)
input string InpFingerprint = "";                          // Gateway certificate fingerprint (SHA256 ...)
input string InpStateDir    = "eagate";                    // Journal folder under MQL5\Files
input int    InpTimerMs     = 100;                         // Polling interval, ms
input ulong  InpDeviationPoints = 20;                      // Maximum slippage, points

long   g_session = 0;
int    g_state   = 0;
CTrade g_trade;

// Which terminal ticket each signal opened (a position, or a pending
// order until it triggers), so close, modify and cancel signals find it.
// Kept for this run of the EA only.
ulong  g_opened_hi[];
ulong  g_opened_lo[];
ulong  g_opened_ticket[];
// Pending orders placed for signals, reported as filled when they trigger.
ulong  g_pending_hi[];
ulong  g_pending_lo[];
ulong  g_pending_order[];

// A signal whose "received" report the library could not store (outbox
// full, disk trouble): it is retried before polling again, because polling
// again would finish it unreported.
bool         g_holding = false;
EagateSignal g_held;
string       g_held_symbol;
string       g_held_comment;

int OnInit()
  {
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
   if(!EagateFlushReports(g_session))
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
                  "this EA stopped. Run it in one place only.");
         else
            Alert("eagate: ", EagateStateText(g_session));
         eagate_close(g_session);
         g_session = 0;
         EventKillTimer();
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

// A pending order placed for a signal has triggered: report its deals (one
// per partial fill) and track the position it opened.
void OnTradeTransaction(const MqlTradeTransaction &trans, const MqlTradeRequest &request, const MqlTradeResult &result)
  {
   if(g_session == 0 || trans.type != TRADE_TRANSACTION_DEAL_ADD)
      return;
   for(int i = ArraySize(g_pending_order) - 1; i >= 0; i--)
     {
      if(g_pending_order[i] != trans.order)
         continue;
      ReportDeal(g_pending_hi[i], g_pending_lo[i], trans.deal);
      Remember(g_opened_hi, g_opened_lo, g_opened_ticket, g_pending_hi[i], g_pending_lo[i], trans.position);
      // Still an active order: more partial fills may follow.
      if(!OrderSelect(trans.order))
         Forget(g_pending_hi, g_pending_lo, g_pending_order, i);
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
   double volume = NormalizeVolume(symbol, EagateDecimal(s.volume_mantissa, s.volume_scale));
   double price  = EagateDecimal(s.price_mantissa, s.price_scale);
   double sl     = EagateDecimal(s.stop_loss_mantissa, s.stop_loss_scale);
   double tp     = EagateDecimal(s.take_profit_mantissa, s.take_profit_scale);
   g_trade.SetExpertMagicNumber(s.magic);
   g_trade.SetTypeFillingBySymbol(symbol);
   bool sent = false;
   ulong ticket = 0;
   switch(s.action)
     {
      case EAGATE_ACTION_OPEN_BUY:
      case EAGATE_ACTION_OPEN_SELL:
        {
         bool buy = s.action == EAGATE_ACTION_OPEN_BUY;
         if(s.order_type == EAGATE_ORDER_TYPE_MARKET)
            sent = buy ? g_trade.Buy(volume, symbol, 0.0, sl, tp, comment)
                       : g_trade.Sell(volume, symbol, 0.0, sl, tp, comment);
         else if(s.order_type == EAGATE_ORDER_TYPE_LIMIT)
            sent = buy ? g_trade.BuyLimit(volume, price, symbol, sl, tp, ORDER_TIME_GTC, 0, comment)
                       : g_trade.SellLimit(volume, price, symbol, sl, tp, ORDER_TIME_GTC, 0, comment);
         else
            sent = buy ? g_trade.BuyStop(volume, price, symbol, sl, tp, ORDER_TIME_GTC, 0, comment)
                       : g_trade.SellStop(volume, price, symbol, sl, tp, ORDER_TIME_GTC, 0, comment);
         break;
        }
      case EAGATE_ACTION_CLOSE:
         if(!Find(s, ticket))
            return true;
         sent = s.volume_mantissa == 0 ? g_trade.PositionClose(ticket)
                                       : g_trade.PositionClosePartial(ticket, volume);
         break;
      case EAGATE_ACTION_MODIFY:
         if(!Find(s, ticket))
            return true;
         // An absent value stays as it is.
         if(PositionSelectByTicket(ticket))
           {
            if(s.stop_loss_scale < 0)
               sl = PositionGetDouble(POSITION_SL);
            if(s.take_profit_scale < 0)
               tp = PositionGetDouble(POSITION_TP);
            sent = g_trade.PositionModify(ticket, sl, tp);
           }
         else
            if(OrderSelect(ticket))
              {
               if(s.price_scale < 0)
                  price = OrderGetDouble(ORDER_PRICE_OPEN);
               if(s.stop_loss_scale < 0)
                  sl = OrderGetDouble(ORDER_SL);
               if(s.take_profit_scale < 0)
                  tp = OrderGetDouble(ORDER_TP);
               sent = g_trade.OrderModify(ticket, price, sl, tp, ORDER_TIME_GTC, 0);
              }
         break;
      case EAGATE_ACTION_CANCEL:
         if(!Find(s, ticket))
            return true;
         sent = g_trade.OrderDelete(ticket);
         break;
      default:
         Reject(s, 0, "this copier does not know action " + IntegerToString(s.action));
         return true;
     }
   uint retcode = g_trade.ResultRetcode();
   if(!sent || (retcode != TRADE_RETCODE_DONE && retcode != TRADE_RETCODE_DONE_PARTIAL && retcode != TRADE_RETCODE_PLACED))
     {
      Reject(s, retcode, g_trade.ResultRetcodeDescription());
      return true;
     }
   bool opening = s.action == EAGATE_ACTION_OPEN_BUY || s.action == EAGATE_ACTION_OPEN_SELL;
   if(opening && retcode == TRADE_RETCODE_PLACED)
     {
      // A pending order: its fills are reported when it triggers.
      Remember(g_pending_hi, g_pending_lo, g_pending_order, s.signal_id_hi, s.signal_id_lo, g_trade.ResultOrder());
      Remember(g_opened_hi, g_opened_lo, g_opened_ticket, s.signal_id_hi, s.signal_id_lo, g_trade.ResultOrder());
      return true;
     }
   ulong deal = g_trade.ResultDeal();
   if(deal != 0)
     {
      ReportDeal(s.signal_id_hi, s.signal_id_lo, deal);
      if(opening && HistoryDealSelect(deal))
         Remember(g_opened_hi, g_opened_lo, g_opened_ticket, s.signal_id_hi, s.signal_id_lo,
                  (ulong)HistoryDealGetInteger(deal, DEAL_POSITION_ID));
     }
   return true;
  }

// The position or order a close, modify or cancel signal refers to.
bool Find(const EagateSignal &s, ulong &ticket)
  {
   if(s.has_reference != 0)
      for(int i = 0; i < ArraySize(g_opened_ticket); i++)
         if(g_opened_hi[i] == s.reference_hi && g_opened_lo[i] == s.reference_lo)
           {
            ticket = g_opened_ticket[i];
            return true;
           }
   Reject(s, ERR_TRADE_POSITION_NOT_FOUND, "no position or order of signal " + EagateSignalId(s.reference_hi, s.reference_lo) + " in this terminal");
   return false;
  }

// Reports a deal with the price and volume the trade server recorded.
void ReportDeal(const ulong hi, const ulong lo, const ulong deal)
  {
   if(!HistoryDealSelect(deal))
     {
      Print("eagate: deal ", deal, " of ", EagateSignalId(hi, lo), " is not in the history; not reported");
      return;
     }
   string symbol = HistoryDealGetString(deal, DEAL_SYMBOL);
   int digits = (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS);
   EagateQueueFill(hi, lo, deal,
                   DoubleToString(HistoryDealGetDouble(deal, DEAL_PRICE), digits),
                   DoubleToString(HistoryDealGetDouble(deal, DEAL_VOLUME), 2));
   EagateFlushReports(g_session);
  }

void Reject(const EagateSignal &s, const uint code, const string text)
  {
   Print("eagate: signal ", EagateSignalId(s.signal_id_hi, s.signal_id_lo), " rejected (", code, "): ", text);
   EagateQueueRejection(s.signal_id_hi, s.signal_id_lo, code, text);
   EagateFlushReports(g_session);
  }

double NormalizeVolume(const string symbol, const double volume)
  {
   double step = SymbolInfoDouble(symbol, SYMBOL_VOLUME_STEP);
   if(step <= 0.0)
      return volume;
   return MathRound(volume / step) * step;
  }

// Records the ticket of a signal, replacing an earlier one.
void Remember(ulong &his[], ulong &los[], ulong &tickets[], const ulong hi, const ulong lo, const ulong ticket)
  {
   int n = ArraySize(tickets);
   for(int i = 0; i < n; i++)
      if(his[i] == hi && los[i] == lo)
        {
         tickets[i] = ticket;
         return;
        }
   ArrayResize(his, n + 1);
   ArrayResize(los, n + 1);
   ArrayResize(tickets, n + 1);
   his[n] = hi;
   los[n] = lo;
   tickets[n] = ticket;
  }

void Forget(ulong &his[], ulong &los[], ulong &tickets[], const int i)
  {
   int last = ArraySize(tickets) - 1;
   his[i] = his[last];
   los[i] = los[last];
   tickets[i] = tickets[last];
   ArrayResize(his, last);
   ArrayResize(los, last);
   ArrayResize(tickets, last);
  }
//+------------------------------------------------------------------+
