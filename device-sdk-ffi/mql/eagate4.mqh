//+------------------------------------------------------------------+
//| eagate4.mqh: the eagate library for MQL4. Copy it with           |
//| eagate.mqh to MQL4\Include, and the 32-bit eagate.dll (built for |
//| i686-pc-windows-gnu, stdcall, undecorated names) to              |
//| MQL4\Libraries.                                                  |
//|                                                                  |
//| MQL4 (build 600 and later) compiles eagate.mqh as it is: the     |
//| imports are stdcall on the 32-bit terminal, which is what the    |
//| DLL's extern "system" functions are there. What differs in MQL4  |
//| for trading (31-bit magic, 31-character comments) is in          |
//| eagate_trade4.mqh, which the copiers without a DLL use too.      |
//+------------------------------------------------------------------+
#property strict

#include <eagate.mqh>

//+------------------------------------------------------------------+
