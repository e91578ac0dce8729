//+------------------------------------------------------------------+
//| eagate_trade4.mqh: the MT4 copiers' trade code, shared by        |
//| EagateCopier.mq4 (the DLL) and EagateHttpCopier.mq4 (no DLL).    |
//| Copy to MQL4\Include.                                            |
//|                                                                  |
//| It acts on an EagateSignal with OrderSend and friends, and tells |
//| the EA what to report through three functions each EA defines    |
//| for its own transport, as eagate_trade5.mqh says:                |
//| EagateReportReceived, EagateReportFill, EagateReportRejection.   |
//| The EA's OnTimer calls CheckPendingFills before polling; its     |
//| OnInit sets g_slippage_points and clears g_holding.              |
//+------------------------------------------------------------------+
#property strict

#ifndef EAGATE_TRADE4_MQH
#define EAGATE_TRADE4_MQH

#include <stdlib.mqh>
#include <eagate_signal.mqh>

// The most a market order may slip, in points (the EA's input).
int g_slippage_points = 20;

// Which ticket each signal opened, so close, modify and cancel signals
// find it; pending ones are reported as filled when they trigger. Kept for
// this run of the EA only.
ulong g_opened_hi[];
ulong g_opened_lo[];
int   g_opened_ticket[];
int   g_opened_pending[];

// A signal whose "received" report could not be stored (the library's
// outbox full, disk trouble): retried before polling again, because polling
// again would finish it unreported.
bool         g_holding = false;
EagateSignal g_held;
string       g_held_symbol;
string       g_held_comment;

// MT4 order magic numbers are 32-bit: the low 31 bits of the signal's.
int EagateMagic4(const ulong magic)
  {
   return (int)(magic & 0x7FFFFFFF);
  }

// MT4 keeps 31 characters of an order comment.
string EagateComment4(const string comment)
  {
   return StringSubstr(comment, 0, 31);
  }
// Acts on a signal. False if its "received" report could not be stored:
// the signal is then held and retried on the next tick.
bool Execute(const EagateSignal &s, const string symbol, const string comment)
  {
   string id = EagateSignalId(s.signal_id_hi, s.signal_id_lo);
   if(!EagateReportReceived(s))
     {
      Print("eagate: cannot record signal ", id, " yet");
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
         ticket = OrderSend(symbol, cmd, volume, price, g_slippage_points, sl, tp,
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
         done = OrderClose(ticket, lots, close_price, g_slippage_points, clrNONE);
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
   EagateReportFill(hi, lo, (ulong)ticket, DoubleToString(price, digits), EagateLotsText(OrderSymbol(), volume));
  }

void Reject(const EagateSignal &s, const int code, const string text)
  {
   Print("eagate: signal ", EagateSignalId(s.signal_id_hi, s.signal_id_lo), " rejected (", code, "): ", text);
   EagateReportRejection(s.signal_id_hi, s.signal_id_lo, (uint)code, text);
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

#endif
//+------------------------------------------------------------------+
