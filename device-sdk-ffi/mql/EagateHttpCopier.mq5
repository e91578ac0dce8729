//+------------------------------------------------------------------+
//| EagateHttpCopier.mq5: copies eagate trade signals into this      |
//| terminal without a DLL, over HTTPS, and reports every execution  |
//| back, exactly once. Its trade code is EagateCopier.mq5's own     |
//| (eagate_trade5.mqh); only the transport differs.                 |
//|                                                                  |
//| Install: docs/metatrader.md, "No DLL". Add the gateway's URL     |
//| under Tools > Options > Expert Advisors > Allow WebRequest.      |
//+------------------------------------------------------------------+
#property copyright "eagate"
#property version   "1.00"
#property strict

#include <eagate_http.mqh>
// The trade code, shared with EagateCopier.mq5: it reports through the
// three EagateReport... functions of eagate_http_copier.mqh.
#include <eagate_trade5.mqh>

input string InpUrl          = "https://gateway.example.com:8443"; // Gateway's device HTTPS URL
input string InpDeviceId     = "";                                 // Device id (dv_...)
input string InpSecret       = "";                                 // Device secret (egs_..., shown once)
input int    InpPollWaitSecs = 5;                                  // Longest wait of one poll, s (0-30)
input ulong  InpDeviationPoints = 20;                              // Maximum slippage, points

#include <eagate_http_copier.mqh>

void OnTimer()
  {
   EagateCopierTick();
  }

// Every deal of an order placed for a signal is reported from here.
void OnTradeTransaction(const MqlTradeTransaction &trans, const MqlTradeRequest &request, const MqlTradeResult &result)
  {
   if(g_running)
      EagateTradeTransaction(trans);
  }

int OnInit()
  {
   g_trade.SetDeviationInPoints(InpDeviationPoints);
   return EagateCopierStart(InpUrl, InpDeviceId, InpSecret, InpPollWaitSecs);
  }

void OnDeinit(const int reason)
  {
   EagateCopierStop();
  }
//+------------------------------------------------------------------+
