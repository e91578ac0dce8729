//+------------------------------------------------------------------+
//| EagateHttpCopier.mq4: copies eagate trade signals into this MT4  |
//| terminal without a DLL, over HTTPS, and reports every execution  |
//| back, exactly once. Its trade code is EagateCopier.mq4's own     |
//| (eagate_trade4.mqh); only the transport differs.                 |
//|                                                                  |
//| Install: docs/metatrader.md, "No DLL". Add the gateway's URL     |
//| under Tools > Options > Expert Advisors > Allow WebRequest.      |
//+------------------------------------------------------------------+
#property copyright "eagate"
#property version   "1.00"
#property strict

#include <eagate_http.mqh>
// The trade code, shared with EagateCopier.mq4: it reports through the
// three EagateReport... functions of eagate_http_copier.mqh.
#include <eagate_trade4.mqh>

input string InpUrl          = "https://gateway.example.com:8443"; // Gateway's device HTTPS URL
input string InpDeviceId     = "";                                 // Device id (dv_...)
input string InpSecret       = "";                                 // Device secret (egs_..., shown once)
input int    InpPollWaitSecs = 5;                                  // Longest wait of one poll, s (0-30)
input int    InpSlippagePoints = 20;                               // Maximum slippage, points

#include <eagate_http_copier.mqh>

void OnTimer()
  {
   // MT4 has no trade transactions: pending orders that became positions
   // are found here, and their fills queued before the tick sends reports.
   if(g_running)
      CheckPendingFills();
   EagateCopierTick();
  }

int OnInit()
  {
   g_slippage_points = InpSlippagePoints;
   return EagateCopierStart(InpUrl, InpDeviceId, InpSecret, InpPollWaitSecs);
  }

void OnDeinit(const int reason)
  {
   EagateCopierStop();
  }
//+------------------------------------------------------------------+
