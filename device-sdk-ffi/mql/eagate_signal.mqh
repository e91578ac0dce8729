//+------------------------------------------------------------------+
//| eagate_signal.mqh: a trade signal as the copiers' trade code     |
//| takes it, for MQL5 and MQL4. Copy to MQL5\Include (MQL4\Include).|
//|                                                                  |
//| No DLL here: eagate.mqh (the DLL's imports) and eagate_http.mqh  |
//| (no DLL) both include it, so one trade code serves the copiers   |
//| of both. The struct is the DLL's EagateSignal byte for byte      |
//| (device-sdk-ffi/tests/mql.rs checks it against include/eagate.h);|
//| eagate_http.mqh fills the same struct from the gateway's JSON.   |
//+------------------------------------------------------------------+
#property strict

#ifndef EAGATE_SIGNAL_MQH
#define EAGATE_SIGNAL_MQH

// What a signal asks for (EagateAction).
#define EAGATE_ACTION_OPEN_BUY  1
#define EAGATE_ACTION_OPEN_SELL 2
#define EAGATE_ACTION_CLOSE     3
#define EAGATE_ACTION_MODIFY    4
#define EAGATE_ACTION_CANCEL    5

// How an opening order is placed (EagateOrderType).
#define EAGATE_ORDER_TYPE_MARKET 1
#define EAGATE_ORDER_TYPE_LIMIT  2
#define EAGATE_ORDER_TYPE_STOP   3

// A trade signal: 8-byte fields first, then 4-byte ones, 128 bytes with
// no padding, so MQL's one-byte packing matches the DLL's layout.
// Decimals are mantissa / 10^scale; scale -1 means absent.
struct EagateSignal
  {
   ulong             position;
   ulong             signal_id_hi;
   ulong             signal_id_lo;
   ulong             reference_hi;
   ulong             reference_lo;
   long              volume_mantissa;
   long              price_mantissa;
   long              stop_loss_mantissa;
   long              take_profit_mantissa;
   ulong             magic;
   ulong             issued_at_ms;
   ulong             expires_at_ms;
   int               action;
   int               order_type;
   int               volume_scale;
   int               price_scale;
   int               stop_loss_scale;
   int               take_profit_scale;
   int               has_reference;
   int               reserved;
  };

// An exact decimal as the double MQL's trade functions take; 0 if absent.
double EagateDecimal(const long mantissa, const int scale)
  {
   if(scale < 0)
      return 0.0;
   return (double)mantissa / MathPow(10.0, scale);
  }

// Lots as decimal text with as many decimals as the symbol's volume step
// has, at least two (step 0.01: "0.10"; step 0.001: "0.005"), so a fill
// reports the volume traded rather than one rounded to hundredths.
string EagateLotsText(const string symbol, const double lots)
  {
   double step = SymbolInfoDouble(symbol, SYMBOL_VOLUME_STEP);
   int digits = 2;
   if(step > 0.0)
     {
      double scaled = step * 100.0;
      while(digits < 8 && MathAbs(scaled - MathRound(scaled)) > 0.000001)
        {
         scaled *= 10.0;
         digits++;
        }
     }
   return DoubleToString(lots, digits);
  }

// The signal id as people see it: 32 hex digits.
string EagateSignalId(const ulong hi, const ulong lo)
  {
   return StringFormat("%016I64x%016I64x", hi, lo);
  }

#endif
//+------------------------------------------------------------------+
