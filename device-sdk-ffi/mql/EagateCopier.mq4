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

// Which ticket each signal opened, so close, modify and cancel signals
// find it; pending ones are reported as filled when they trigger.
ulong g_opened_hi[];
ulong g_opened_lo[];
int   g_opened_ticket[];
int   g_opened_pending[];

int OnInit()
  {
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
   EagateSignal signal;
   string symbol, comment;
   for(int i = 0; i < 32; i++)
     {
      int result = EagatePollSignal(g_session, signal, symbol, comment);
      if(result == EAGATE_RESULT_NO_SIGNAL)
         break;
      if(result == EAGATE_RESULT_STOPPED)
        {
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
      Execute(signal, symbol, comment);
     }
  }

void Execute(const EagateSignal &s, const string symbol, const string comment)
  {
   string id = EagateSignalId(s.signal_id_hi, s.signal_id_lo);
   if(eagate_report_received(g_session, s.signal_id_hi, s.signal_id_lo) != EAGATE_RESULT_OK)
     {
      Print("eagate: cannot record signal ", id, ": ", EagateHandleError(g_session));
      return;
     }
   if(s.expires_at_ms != 0 && (ulong)TimeGMT() * 1000 > s.expires_at_ms)
     {
      Reject(s, 0, "the signal expired before it reached the terminal");
      return;
     }
   if(!SymbolSelect(symbol, true))
     {
      Reject(s, GetLastError(), "unknown symbol " + symbol);
      return;
     }
   RefreshRates();
   int    digits = (int)MarketInfo(symbol, MODE_DIGITS);
   double volume = NormalizeVolume(symbol, EagateDecimal(s.volume_mantissa, s.volume_scale));
   double price  = NormalizeDouble(EagateDecimal(s.price_mantissa, s.price_scale), digits);
   double sl     = NormalizeDouble(EagateDecimal(s.stop_loss_mantissa, s.stop_loss_scale), digits);
   double tp     = NormalizeDouble(EagateDecimal(s.take_profit_mantissa, s.take_profit_scale), digits);
   int    magic  = EagateMagic4(s.magic);
   string note   = EagateComment4(comment);
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
         ticket = OrderSend(symbol, cmd, volume, price, InpSlippagePoints, sl, tp, note, magic, 0, clrNONE);
         if(ticket < 0)
            break;
         Remember(s.signal_id_hi, s.signal_id_lo, ticket, cmd > OP_SELL);
         if(cmd <= OP_SELL)
            ReportFill(s.signal_id_hi, s.signal_id_lo, ticket);
         done = true;
         break;
        }
      case EAGATE_ACTION_CLOSE:
        {
         if(!Find(s, ticket))
            return;
         double lots = s.volume_mantissa == 0 ? OrderLots() : volume;
         double close_price = OrderType() == OP_BUY ? MarketInfo(symbol, MODE_BID) : MarketInfo(symbol, MODE_ASK);
         done = OrderClose(ticket, lots, close_price, InpSlippagePoints, clrNONE);
         if(done)
            ReportCloseFill(s, ticket, lots);
         break;
        }
      case EAGATE_ACTION_MODIFY:
         if(!Find(s, ticket))
            return;
         done = OrderModify(ticket, OrderType() > OP_SELL && s.price_scale >= 0 ? price : OrderOpenPrice(), sl, tp, 0, clrNONE);
         break;
      case EAGATE_ACTION_CANCEL:
         if(!Find(s, ticket))
            return;
         done = OrderDelete(ticket, clrNONE);
         break;
     }
   if(!done)
     {
      int error = GetLastError();
      Reject(s, error, ErrorDescription(error));
     }
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
         ReportFill(g_opened_hi[i], g_opened_lo[i], g_opened_ticket[i]);
         g_opened_pending[i] = 0;
        }
     }
  }

// Selects the order a close, modify or cancel signal refers to.
bool Find(const EagateSignal &s, int &ticket)
  {
   if(s.has_reference != 0)
      for(int i = 0; i < ArraySize(g_opened_ticket); i++)
         if(g_opened_hi[i] == s.reference_hi && g_opened_lo[i] == s.reference_lo && OrderSelect(g_opened_ticket[i], SELECT_BY_TICKET))
           {
            ticket = g_opened_ticket[i];
            return true;
           }
   Reject(s, ERR_INVALID_TICKET, "no order of signal " + EagateSignalId(s.reference_hi, s.reference_lo) + " in this terminal");
   return false;
  }

void ReportFill(const ulong hi, const ulong lo, const int ticket)
  {
   if(!OrderSelect(ticket, SELECT_BY_TICKET))
      return;
   int digits = (int)MarketInfo(OrderSymbol(), MODE_DIGITS);
   int result = eagate_report_filled(g_session, hi, lo, (ulong)ticket, DoubleToString(OrderOpenPrice(), digits), DoubleToString(OrderLots(), 2));
   if(result != EAGATE_RESULT_OK)
      Print("eagate: fill of ", EagateSignalId(hi, lo), " not recorded: ", EagateHandleError(g_session));
  }

void ReportCloseFill(const EagateSignal &s, const int ticket, const double lots)
  {
   if(!OrderSelect(ticket, SELECT_BY_TICKET))
      return;
   int digits = (int)MarketInfo(OrderSymbol(), MODE_DIGITS);
   int result = eagate_report_filled(g_session, s.signal_id_hi, s.signal_id_lo, (ulong)ticket, DoubleToString(OrderClosePrice(), digits), DoubleToString(lots, 2));
   if(result != EAGATE_RESULT_OK)
      Print("eagate: close of ", EagateSignalId(s.signal_id_hi, s.signal_id_lo), " not recorded: ", EagateHandleError(g_session));
  }

void Reject(const EagateSignal &s, const int code, const string text)
  {
   Print("eagate: signal ", EagateSignalId(s.signal_id_hi, s.signal_id_lo), " rejected (", code, "): ", text);
   if(eagate_report_rejected(g_session, s.signal_id_hi, s.signal_id_lo, (uint)code, text) != EAGATE_RESULT_OK)
      Print("eagate: rejection not recorded: ", EagateHandleError(g_session));
  }

double NormalizeVolume(const string symbol, const double volume)
  {
   double step = MarketInfo(symbol, MODE_LOTSTEP);
   if(step <= 0.0)
      return volume;
   return MathRound(volume / step) * step;
  }

void Remember(const ulong hi, const ulong lo, const int ticket, const bool pending)
  {
   int n = ArraySize(g_opened_ticket);
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
