//+------------------------------------------------------------------+
//| eagate4.mqh: the eagate library for MQL4. Copy it with           |
//| eagate.mqh to MQL4\Include, and the 32-bit eagate.dll (built for |
//| i686-pc-windows-gnu, stdcall, undecorated names) to              |
//| MQL4\Libraries.                                                  |
//|                                                                  |
//| MQL4 (build 600 and later) compiles eagate.mqh as it is: the     |
//| imports are stdcall on the 32-bit terminal, which is what the    |
//| DLL's extern "system" functions are there. This file adds what   |
//| differs in MQL4.                                                 |
//+------------------------------------------------------------------+
#property strict

#include <eagate.mqh>

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
//+------------------------------------------------------------------+
