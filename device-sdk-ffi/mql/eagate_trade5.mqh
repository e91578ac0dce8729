//+------------------------------------------------------------------+
//| eagate_trade5.mqh: the MT5 copiers' trade code, shared by        |
//| EagateCopier.mq5 (the DLL) and EagateHttpCopier.mq5 (no DLL).    |
//| Copy to MQL5\Include.                                            |
//|                                                                  |
//| It acts on an EagateSignal with CTrade and tells the EA what to  |
//| report through three functions each EA defines for its own       |
//| transport:                                                       |
//|   bool EagateReportReceived(const EagateSignal &s)               |
//|        the signal's "received" report, stored before it is acted |
//|        on; false when it could not be (the signal is held and    |
//|        retried on the next tick);                                |
//|   void EagateReportFill(hi, lo, ticket, price, volume)           |
//|   void EagateReportRejection(hi, lo, code, text)                 |
//|   void EagateReportReversal(hi, lo, ticket)                      |
//|        queue the report where a restart does not lose it.        |
//| The EA's OnTradeTransaction calls EagateTradeTransaction, and    |
//| its OnInit sets g_trade's deviation and clears g_holding.        |
//+------------------------------------------------------------------+
#property strict

#ifndef EAGATE_TRADE5_MQH
#define EAGATE_TRADE5_MQH

#include <Trade\Trade.mqh>
#include <eagate_signal.mqh>

CTrade g_trade;

// Which terminal ticket each signal opened (a position, or a pending
// order until it triggers), so close, modify and cancel signals find it.
// Kept for this run of the EA only.
ulong  g_opened_hi[];
ulong  g_opened_lo[];
ulong  g_opened_ticket[];
// Orders placed for signals whose deals come later, as
// TRADE_TRANSACTION_DEAL_ADD: a pending order when it triggers, a market
// order whose trade result carried no deal (or only part of its volume).
ulong  g_pending_hi[];
ulong  g_pending_lo[];
ulong  g_pending_order[];
// The last deals reported, so the DEAL_ADD that follows a trade result
// already reported does not report the same deal twice, and with their
// signals, so a deal the broker deletes is reported reversed (once: its
// signal is cleared then), and with the lots they moved (which opening
// signal's, by how much), which a deletion gives back.
#define REPORTED_DEALS 256
ulong  g_reported_deal[REPORTED_DEALS];
ulong  g_reported_hi[REPORTED_DEALS];
ulong  g_reported_lo[REPORTED_DEALS];
ulong  g_reported_lots_hi[REPORTED_DEALS];
ulong  g_reported_lots_lo[REPORTED_DEALS];
double g_reported_lots[REPORTED_DEALS];
int    g_reported_next = 0;

// Lots each opening signal holds in its position, from its fills less its
// closes: on a netting account one position per symbol holds every
// signal's lots, and a close signal closes only its own signal's.
ulong  g_lots_hi[];
ulong  g_lots_lo[];
double g_lots[];
// Which opening signal each close signal refers to, for its fills.
ulong  g_close_hi[];
ulong  g_close_lo[];
ulong  g_close_ref_hi[];
ulong  g_close_ref_lo[];

// A signal whose "received" report could not be stored (the library's
// outbox full, disk trouble): it is retried before polling again, because
// polling again would finish it unreported.
bool         g_holding = false;
EagateSignal g_held;
string       g_held_symbol;
string       g_held_comment;

// A deal of an order placed for a signal: a pending order that triggered,
// or a market order's deal its trade result did not carry. Reported from
// the transaction itself (one report per deal, so one per partial fill),
// never from the history, which may not hold the deal yet.
// The EA's OnTradeTransaction passes every transaction here.
void EagateTradeTransaction(const MqlTradeTransaction &trans)
  {
   if(trans.type == TRADE_TRANSACTION_DEAL_DELETE)
     {
      ReportReversal(trans.deal);
      return;
     }
   if(trans.type != TRADE_TRANSACTION_DEAL_ADD)
      return;
   for(int i = ArraySize(g_pending_order) - 1; i >= 0; i--)
     {
      if(g_pending_order[i] != trans.order)
         continue;
      ulong hi = g_pending_hi[i];
      ulong lo = g_pending_lo[i];
      ReportFill(hi, lo, trans.deal, trans.symbol, trans.price, trans.volume);
      // An opening signal's position, known for certain only now (on a
      // netting account it is the symbol's existing position, if any).
      if(Tracked(g_opened_hi, g_opened_lo, hi, lo))
         Remember(g_opened_hi, g_opened_lo, g_opened_ticket, hi, lo, trans.position);
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
   double volume = NormalizeVolume(symbol, EagateDecimal(s.volume_mantissa, s.volume_scale));
   double price  = EagateDecimal(s.price_mantissa, s.price_scale);
   double sl     = EagateDecimal(s.stop_loss_mantissa, s.stop_loss_scale);
   double tp     = EagateDecimal(s.take_profit_mantissa, s.take_profit_scale);
   g_trade.SetExpertMagicNumber(s.magic);
   g_trade.SetTypeFillingBySymbol(symbol);
   bool sent = false;
   ulong ticket = 0;
   // The symbol the deal is in, for its price's digits: a close or modify
   // signal names none of its own, its position does.
   string traded = symbol;
   // Stops to put back on a netting position reduced by an opposite deal.
   bool   restore = false;
   double restore_sl = 0.0;
   double restore_tp = 0.0;
   ResetLastError();
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
        {
         if(!Find(s, ticket))
            return true;
         if(!PositionSelectByTicket(ticket))
           {
            Reject(s, ERR_TRADE_POSITION_NOT_FOUND, "the position of signal "
                   + EagateSignalId(s.reference_hi, s.reference_lo) + " is not open (closed already, or an order not yet filled)");
            return true;
           }
         traded = PositionGetString(POSITION_SYMBOL);
         double held = PositionGetDouble(POSITION_VOLUME);
         bool hedging = AccountInfoInteger(ACCOUNT_MARGIN_MODE) == ACCOUNT_MARGIN_MODE_RETAIL_HEDGING;
         // On a netting or exchange account the symbol's one position may
         // hold other signals' lots too: a whole close closes this
         // signal's lots only (all of it if they are not known).
         if(!hedging && s.volume_mantissa == 0)
            volume = LotsOf(s.reference_hi, s.reference_lo) > 0.0 ? LotsOf(s.reference_hi, s.reference_lo) : held;
         // Its fills take lots from the signal it closes.
         Remember(g_close_hi, g_close_lo, g_close_ref_hi, s.signal_id_hi, s.signal_id_lo, s.reference_hi);
         Remember(g_close_hi, g_close_lo, g_close_ref_lo, s.signal_id_hi, s.signal_id_lo, s.reference_lo);
         if((hedging && s.volume_mantissa == 0) || volume >= held)
            sent = g_trade.PositionClose(ticket);
         else if(hedging)
            sent = g_trade.PositionClosePartial(ticket, volume);
         else
           {
            // Netting and exchange accounts have no partial close (CTrade
            // refuses it): an opposite deal of the volume reduces the
            // position; below the position's volume, it cannot reverse
            // it. It carries no stops (the position's are on the wrong
            // side for an opposite order); the position's are put back
            // after, in case the server cleared them.
            restore_sl = PositionGetDouble(POSITION_SL);
            restore_tp = PositionGetDouble(POSITION_TP);
            restore = restore_sl != 0.0 || restore_tp != 0.0;
            sent = PositionGetInteger(POSITION_TYPE) == POSITION_TYPE_BUY
                   ? g_trade.Sell(volume, traded, 0.0, 0.0, 0.0, comment)
                   : g_trade.Buy(volume, traded, 0.0, 0.0, 0.0, comment);
           }
         break;
        }
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
            else
              {
               // Nothing was sent, so the trade result still holds the
               // previous request's retcode: this rejection has its own.
               Reject(s, ERR_TRADE_POSITION_NOT_FOUND, "the position or order of signal "
                      + EagateSignalId(s.reference_hi, s.reference_lo) + " is gone (closed, filled or deleted)");
               return true;
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
   bool succeeded = retcode == TRADE_RETCODE_DONE || retcode == TRADE_RETCODE_DONE_PARTIAL
                    || retcode == TRADE_RETCODE_PLACED;
   if(!sent && (retcode == 0 || succeeded))
     {
      // Refused before anything reached the trade server (CTrade's own
      // checks): the result's retcode is not this request's.
      uint error = (uint)GetLastError();
      Reject(s, error, "the terminal refused the request before sending it (error " + IntegerToString(error) + ")");
      return true;
     }
   if(!sent || !succeeded)
     {
      Reject(s, retcode, g_trade.ResultRetcodeDescription());
      return true;
     }
   bool opening = s.action == EAGATE_ACTION_OPEN_BUY || s.action == EAGATE_ACTION_OPEN_SELL;
   ulong order = g_trade.ResultOrder();
   if(opening)
     {
      // The order's ticket is its position's on a hedging account; on a
      // netting one the symbol's position is known at once, for a close
      // or modify later in this same batch. The deal's transaction
      // confirms or corrects it.
      ulong position = order;
      if(retcode != TRADE_RETCODE_PLACED
         && AccountInfoInteger(ACCOUNT_MARGIN_MODE) != ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
         && PositionSelect(traded))
         position = (ulong)PositionGetInteger(POSITION_TICKET);
      Remember(g_opened_hi, g_opened_lo, g_opened_ticket, s.signal_id_hi, s.signal_id_lo, position);
     }
   if(order != 0)
      // Every later deal of this order is reported as it comes: a pending
      // order's fills, the rest of a partial fill, or the deal itself when
      // the result carried none.
      Remember(g_pending_hi, g_pending_lo, g_pending_order, s.signal_id_hi, s.signal_id_lo, order);
   if(retcode == TRADE_RETCODE_PLACED)
      return true;
   // A market deal is reported from the trade result: the terminal's
   // history lags OrderSend, so HistoryDealSelect may not find the deal yet,
   // and a fill must not depend on it.
   ulong deal = g_trade.ResultDeal();
   if(deal != 0 && g_trade.ResultVolume() > 0.0 && g_trade.ResultPrice() > 0.0)
      ReportFill(s.signal_id_hi, s.signal_id_lo, deal, traded, g_trade.ResultPrice(), g_trade.ResultVolume());
   // After the report: this request replaces the trade result.
   if(restore && PositionSelectByTicket(ticket) && !g_trade.PositionModify(ticket, restore_sl, restore_tp))
      Print("eagate: could not put back the stops of position ", ticket, ": ", g_trade.ResultRetcodeDescription());
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

// Reports a deal with the price and volume the trade server confirmed,
// once: a deal already reported (from its trade result) is not again when
// its transaction arrives.
void ReportFill(const ulong hi, const ulong lo, const ulong deal, const string symbol, const double price, const double lots)
  {
   for(int i = 0; i < REPORTED_DEALS; i++)
      if(g_reported_deal[i] == deal)
         return;
   int slot = g_reported_next;
   g_reported_deal[slot] = deal;
   g_reported_hi[slot] = hi;
   g_reported_lo[slot] = lo;
   g_reported_next = (g_reported_next + 1) % REPORTED_DEALS;
   int digits = (int)SymbolInfoInteger(symbol, SYMBOL_DIGITS);
   EagateReportFill(hi, lo, deal, DoubleToString(price, digits), EagateLotsText(symbol, lots));
   // The lots each opening signal holds: its fills add, its closes' take.
   int closing = Index(g_close_hi, g_close_lo, hi, lo);
   if(closing >= 0)
     {
      g_reported_lots_hi[slot] = g_close_ref_hi[closing];
      g_reported_lots_lo[slot] = g_close_ref_lo[closing];
      g_reported_lots[slot] = -lots;
     }
   else
     {
      g_reported_lots_hi[slot] = hi;
      g_reported_lots_lo[slot] = lo;
      g_reported_lots[slot] = lots;
     }
   AddLots(g_reported_lots_hi[slot], g_reported_lots_lo[slot], g_reported_lots[slot]);
  }

// A deal deleted from the history (the broker cancelled it) that this EA
// reported as a fill: its signal's fills with that ticket are reversed.
// Only deals among the last REPORTED_DEALS of this run are known.
void ReportReversal(const ulong deal)
  {
   if(deal == 0)
      return;
   for(int i = 0; i < REPORTED_DEALS; i++)
     {
      if(g_reported_deal[i] != deal || (g_reported_hi[i] == 0 && g_reported_lo[i] == 0))
         continue;
      Print("eagate: deal ", deal, " of signal ", EagateSignalId(g_reported_hi[i], g_reported_lo[i]), " was deleted by the broker");
      EagateReportReversal(g_reported_hi[i], g_reported_lo[i], deal);
      // The deal's lots are no longer in the position: a later close
      // signal must not close them.
      AddLots(g_reported_lots_hi[i], g_reported_lots_lo[i], -g_reported_lots[i]);
      g_reported_hi[i] = 0;
      g_reported_lo[i] = 0;
     }
  }

void Reject(const EagateSignal &s, const uint code, const string text)
  {
   Print("eagate: signal ", EagateSignalId(s.signal_id_hi, s.signal_id_lo), " rejected (", code, "): ", text);
   EagateReportRejection(s.signal_id_hi, s.signal_id_lo, code, text);
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

// Where a signal is in a list, or -1.
int Index(const ulong &his[], const ulong &los[], const ulong hi, const ulong lo)
  {
   for(int i = 0; i < ArraySize(his); i++)
      if(his[i] == hi && los[i] == lo)
         return i;
   return -1;
  }

// Whether a ticket is recorded for a signal.
bool Tracked(const ulong &his[], const ulong &los[], const ulong hi, const ulong lo)
  {
   return Index(his, los, hi, lo) >= 0;
  }

// The lots an opening signal holds, 0 if unknown.
double LotsOf(const ulong hi, const ulong lo)
  {
   int i = Index(g_lots_hi, g_lots_lo, hi, lo);
   return i >= 0 ? g_lots[i] : 0.0;
  }

void AddLots(const ulong hi, const ulong lo, const double lots)
  {
   int i = Index(g_lots_hi, g_lots_lo, hi, lo);
   if(i < 0)
     {
      i = ArraySize(g_lots);
      ArrayResize(g_lots_hi, i + 1);
      ArrayResize(g_lots_lo, i + 1);
      ArrayResize(g_lots, i + 1);
      g_lots_hi[i] = hi;
      g_lots_lo[i] = lo;
      g_lots[i] = 0.0;
     }
   g_lots[i] = MathMax(0.0, g_lots[i] + lots);
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

#endif
//+------------------------------------------------------------------+
