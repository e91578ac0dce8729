//+------------------------------------------------------------------+
//| eagate_http.mqh: eagate without a DLL, for MQL5 and MQL4.        |
//| Copy to MQL5\Include (MQL4\Include). No eagate.dll needed:       |
//| the EA talks to the gateway's device HTTPS listener with         |
//| WebRequest (add its URL under Tools > Options > Expert Advisors) |
//| and signs every request as shared/spec/DEVICE-HTTP.md says.      |
//|                                                                  |
//| MetaEditor does not run where eagate is built. Every function    |
//| between "twin begin" and "twin end" is, token for token, its     |
//| namesake in reference/eagate_http_ref.c (references aside), and  |
//| device-sdk-ffi/tests/mql.rs holds them to that; the C twin is    |
//| run against the spec's vectors and a live gateway. The rest      |
//| (WebRequest, files, JSON) is MQL's own and needs a terminal:     |
//| docs/metatrader.md lists what was checked and what was not.      |
//+------------------------------------------------------------------+
#property strict

#ifndef EAGATE_HTTP_MQH
#define EAGATE_HTTP_MQH

// The signal struct the copiers' trade code takes (no DLL in it).
#include <eagate_signal.mqh>

// The longest text built: a canonical request with a long target.
#define EAGATE_MAX_TEXT 2048
// An HMAC's inner block: 64 bytes of padded key, then the message.
#define EAGATE_MAX_INNER 2112
// The most reports one request carries.
#define EAGATE_HTTP_BATCH 64

// Bytes being built, and how many; a length of -1 says they overflowed.
struct EagateText
  {
   uchar             bytes[EAGATE_MAX_TEXT];
   int               len;
  };

// SHA-256 by the terminal (CryptEncode). An empty input is not handed to
// CryptEncode (terminals differ on it): its hash is the spec's constant.
bool g_eagate_hash_failed = false;

void eagate_sha256(const uchar &data[], int len, uchar &out[])
  {
   uchar bytes_in[];   // not "input": a reserved word in MQL
   uchar key[];
   uchar hash[];
   int i;
   if(len == 0)
     {
      string empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
      for(i = 0; i < 32; i++)
         out[i] = (uchar)((EagateHexValue(StringGetCharacter(empty, 2 * i)) << 4)
                          | EagateHexValue(StringGetCharacter(empty, 2 * i + 1)));
      return;
     }
   ArrayResize(bytes_in, len);
   for(i = 0; i < len; i++)
      bytes_in[i] = data[i];
   if(CryptEncode(CRYPT_HASH_SHA256, bytes_in, key, hash) != 32)
     {
      g_eagate_hash_failed = true;
      for(i = 0; i < 32; i++)
         out[i] = 0;
      return;
     }
   for(i = 0; i < 32; i++)
      out[i] = hash[i];
  }

int EagateHexValue(const int c)
  {
   if(c >= '0' && c <= '9')
      return c - '0';
   if(c >= 'a' && c <= 'f')
      return c - 'a' + 10;
   return -1;
  }

// Appends the text's UTF-8 bytes (no terminating zero).
void eagate_append_text(EagateText &c, const string text)
  {
   uchar utf8[];
   int n = StringToCharArray(text, utf8, 0, WHOLE_ARRAY, CP_UTF8);
   if(n > 0 && utf8[n - 1] == 0)
      n--;
   if(c.len < 0 || n > EAGATE_MAX_TEXT - c.len)
     {
      c.len = -1;
      return;
     }
   for(int i = 0; i < n; i++)
      c.bytes[c.len + i] = utf8[i];
   c.len += n;
  }

// twin begin: eagate_append_byte
void eagate_append_byte(EagateText &c, int b) {
    if (c.len < 0 || c.len >= EAGATE_MAX_TEXT) {
        c.len = -1;
        return;
    }
    c.bytes[c.len] = (uchar)b;
    c.len++;
}
// twin end

// twin begin: eagate_append_decimal
void eagate_append_decimal(EagateText &c, ulong value) {
    uchar digits[20];
    int n = 0;
    do {
        digits[n] = (uchar)('0' + (int)(value % 10));
        value = value / 10;
        n++;
    } while (value > 0);
    while (n > 0) {
        n--;
        eagate_append_byte(c, digits[n]);
    }
}
// twin end

// twin begin: eagate_hex_digit
int eagate_hex_digit(int v) {
    if (v < 10) return '0' + v;
    return 'a' + v - 10;
}
// twin end

// twin begin: eagate_append_hex
void eagate_append_hex(EagateText &c, const uchar &bytes[], int len) {
    int i;
    for (i = 0; i < len; i++) {
        eagate_append_byte(c, eagate_hex_digit(bytes[i] >> 4));
        eagate_append_byte(c, eagate_hex_digit(bytes[i] & 15));
    }
}
// twin end

// twin begin: eagate_hmac_sha256
void eagate_hmac_sha256(const uchar &key[], int key_len, const uchar &msg[], int msg_len, uchar &mac[]) {
    uchar block[64];
    uchar inner[EAGATE_MAX_INNER];
    uchar outer[96];
    uchar inner_hash[32];
    int i;
    for (i = 0; i < 64; i++) block[i] = 0;
    for (i = 0; i < key_len && i < 64; i++) block[i] = key[i];
    for (i = 0; i < 64; i++) {
        inner[i] = (uchar)(block[i] ^ 0x36);
        outer[i] = (uchar)(block[i] ^ 0x5c);
    }
    for (i = 0; i < msg_len; i++) inner[64 + i] = msg[i];
    eagate_sha256(inner, 64 + msg_len, inner_hash);
    for (i = 0; i < 32; i++) outer[64 + i] = inner_hash[i];
    eagate_sha256(outer, 96, mac);
}
// twin end

// twin begin: eagate_sign_request
int eagate_sign_request(const uchar &secret[], const string method, const string target,
                        const string device_id, ulong timestamp_ms, const uchar &nonce[],
                        const uchar &body[], int body_len, EagateText &signature_hex) {
    EagateText canonical;
    uchar body_hash[32];
    uchar mac[32];
    eagate_sha256(body, body_len, body_hash);
    canonical.len = 0;
    eagate_append_text(canonical, "eagate/1 device-http");
    eagate_append_byte(canonical, 10);
    eagate_append_text(canonical, method);
    eagate_append_byte(canonical, 10);
    eagate_append_text(canonical, target);
    eagate_append_byte(canonical, 10);
    eagate_append_text(canonical, device_id);
    eagate_append_byte(canonical, 10);
    eagate_append_decimal(canonical, timestamp_ms);
    eagate_append_byte(canonical, 10);
    eagate_append_hex(canonical, nonce, 16);
    eagate_append_byte(canonical, 10);
    eagate_append_hex(canonical, body_hash, 32);
    if (canonical.len < 0) return 0;
    eagate_hmac_sha256(secret, 32, canonical.bytes, canonical.len, mac);
    signature_hex.len = 0;
    eagate_append_hex(signature_hex, mac, 32);
    return 1;
}
// twin end

// twin begin: eagate_verify_answer
int eagate_verify_answer(const uchar &secret[], const uchar &nonce[], int status, const uchar &body[],
                         int body_len, const string signature_hex) {
    EagateText canonical;
    EagateText expected;
    EagateText got;
    uchar body_hash[32];
    uchar mac[32];
    int i;
    int diff;
    if (status < 100 || status > 999) return 0;
    eagate_sha256(body, body_len, body_hash);
    canonical.len = 0;
    eagate_append_text(canonical, "eagate/1 gateway-http");
    eagate_append_byte(canonical, 10);
    eagate_append_hex(canonical, nonce, 16);
    eagate_append_byte(canonical, 10);
    eagate_append_decimal(canonical, (ulong)status);
    eagate_append_byte(canonical, 10);
    eagate_append_hex(canonical, body_hash, 32);
    if (canonical.len < 0) return 0;
    eagate_hmac_sha256(secret, 32, canonical.bytes, canonical.len, mac);
    expected.len = 0;
    eagate_append_hex(expected, mac, 32);
    got.len = 0;
    eagate_append_text(got, signature_hex);
    if (got.len != 64) return 0;
    diff = 0;
    for (i = 0; i < 64; i++) diff = diff | (expected.bytes[i] ^ got.bytes[i]);
    return diff == 0;
}
// twin end

// twin begin: eagate_make_nonce
void eagate_make_nonce(const string device_id, ulong counter, ulong time_ms, int random_a,
                       int random_b, uchar &nonce[]) {
    EagateText seed;
    uchar hash[32];
    int i;
    seed.len = 0;
    eagate_append_text(seed, "eagate/1 nonce");
    eagate_append_byte(seed, 10);
    eagate_append_text(seed, device_id);
    eagate_append_byte(seed, 10);
    eagate_append_decimal(seed, counter);
    eagate_append_byte(seed, 10);
    eagate_append_decimal(seed, time_ms);
    eagate_append_byte(seed, 10);
    eagate_append_decimal(seed, (ulong)random_a);
    eagate_append_byte(seed, 10);
    eagate_append_decimal(seed, (ulong)random_b);
    eagate_sha256(seed.bytes, seed.len, hash);
    for (i = 0; i < 16; i++) nonce[i] = hash[i];
}
// twin end

// twin begin: eagate_base64url_value
int eagate_base64url_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}
// twin end

// twin begin: eagate_parse_secret
int eagate_parse_secret(const string text, uchar &secret[]) {
    EagateText t;
    int i;
    int v;
    int bits = 0;
    int acc = 0;
    int out = 0;
    t.len = 0;
    eagate_append_text(t, text);
    if (t.len != 47) return 0;
    if (t.bytes[0] != 'e' || t.bytes[1] != 'g' || t.bytes[2] != 's' || t.bytes[3] != '_') return 0;
    for (i = 4; i < 47; i++) {
        v = eagate_base64url_value(t.bytes[i]);
        if (v < 0) return 0;
        acc = ((acc << 6) | v) & 16383;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (out < 32) secret[out] = (uchar)((acc >> bits) & 255);
            out++;
        }
    }
    if (out != 32) return 0;
    if ((acc & ((1 << bits) - 1)) != 0) return 0;
    return 1;
}
// twin end

// A decimal as the gateway writes it (-?digits(.digits)?, nothing else):
// 1 with its mantissa and scale, or 0. At most 18 decimals, as the
// gateway; at most 18 digits after leading zeros, so the mantissa cannot
// overflow a long (the gateway takes 19; no price or volume comes near).
// twin begin: eagate_parse_decimal
int eagate_parse_decimal(const string text, long &mantissa, int &scale) {
    EagateText t;
    int i;
    int c;
    int start = 0;
    int digits = 0;
    int fraction = -1;
    long m = 0;
    t.len = 0;
    eagate_append_text(t, text);
    if (t.len > 0 && t.bytes[0] == '-') start = 1;
    for (i = start; i < t.len; i++) {
        c = t.bytes[i];
        if (c == '.' && fraction < 0 && digits > 0) {
            fraction = 0;
        } else if (c >= '0' && c <= '9' && m <= 99999999999999999) {
            m = m * 10 + (c - '0');
            digits++;
            if (fraction >= 0) fraction++;
        } else {
            return 0;
        }
    }
    if (digits == 0 || fraction == 0 || fraction > 18) return 0;
    if (start == 1) m = -m;
    mantissa = m;
    scale = fraction < 0 ? 0 : fraction;
    return 1;
}
// twin end

// A signal id as the gateway writes it, 32 lowercase hex digits: 1 with
// its high and low 64 bits (the DLL struct's two ulongs), or 0.
// twin begin: eagate_parse_signal_id
int eagate_parse_signal_id(const string text, ulong &hi, ulong &lo) {
    EagateText t;
    int i;
    int c;
    int v;
    ulong h = 0;
    ulong l = 0;
    t.len = 0;
    eagate_append_text(t, text);
    if (t.len != 32) return 0;
    for (i = 0; i < 32; i++) {
        c = t.bytes[i];
        if (c >= '0' && c <= '9') v = c - '0';
        else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        else return 0;
        if (i < 16) h = (h << 4) | (ulong)v;
        else l = (l << 4) | (ulong)v;
    }
    hi = h;
    lo = l;
    return 1;
}
// twin end

// A whole number as the gateway writes it (digits only, up to 2^64 - 1):
// 1 with its value, or 0. For the signal's magic, which MetaTrader 5
// takes as a full ulong (StringToInteger stops at 2^63 - 1).
// twin begin: eagate_parse_unsigned
int eagate_parse_unsigned(const string text, ulong &value) {
    EagateText t;
    int i;
    int d;
    ulong v = 0;
    t.len = 0;
    eagate_append_text(t, text);
    if (t.len < 1 || t.len > 20) return 0;
    for (i = 0; i < t.len; i++) {
        d = t.bytes[i] - '0';
        if (d < 0 || d > 9) return 0;
        if (v > 1844674407370955161 || (v == 1844674407370955161 && d > 5)) return 0;
        v = v * 10 + (ulong)d;
    }
    value = v;
    return 1;
}
// twin end

//+------------------------------------------------------------------+
//| The client: MQL's own from here on (needs a terminal to run).    |
//+------------------------------------------------------------------+

// A signal as the gateway sends it (its JSON fields, decimals as text).
struct EagateHttpSignal
  {
   string            channel;
   ulong             position;
   string            signal_id;
   string            symbol;
   string            action;        // OpenBuy, OpenSell, Close, Modify, Cancel
   string            order_type;    // Market, Limit, Stop
   string            volume;
   string            price;         // "" when absent
   string            stop_loss;
   string            take_profit;
   string            magic;         // a whole number up to 2^64 - 1, as text
   string            comment;
   ulong             issued_at_ms;
   ulong             expires_at_ms; // 0 when absent
   string            reference;     // "" when absent
  };

// A decimal field as the trade code takes it: "" (absent) is scale -1.
bool EagateHttpDecimal(const string text, long &mantissa, int &scale)
  {
   mantissa = 0;
   scale = -1;
   if(text == "")
      return true;
   return eagate_parse_decimal(text, mantissa, scale) == 1;
  }

// A polled signal as the DLL copiers' struct (eagate_signal.mqh), so one
// trade code serves both; false, with why, when a field is not what the
// gateway writes (the EA rejects the signal rather than guess).
bool EagateHttpToSignal(const EagateHttpSignal &h, EagateSignal &s, string &why)
  {
   ZeroMemory(s);
   s.position = h.position;
   s.issued_at_ms = h.issued_at_ms;
   s.expires_at_ms = h.expires_at_ms;
   if(eagate_parse_signal_id(h.signal_id, s.signal_id_hi, s.signal_id_lo) != 1)
     {
      why = "signal id " + h.signal_id;
      return false;
     }
   if(eagate_parse_unsigned(h.magic, s.magic) != 1)
     {
      why = "magic " + h.magic;
      return false;
     }
   if(h.reference != "")
     {
      if(eagate_parse_signal_id(h.reference, s.reference_hi, s.reference_lo) != 1)
        {
         why = "reference " + h.reference;
         return false;
        }
      s.has_reference = 1;
     }
   if(h.action == "OpenBuy")
      s.action = EAGATE_ACTION_OPEN_BUY;
   else if(h.action == "OpenSell")
      s.action = EAGATE_ACTION_OPEN_SELL;
   else if(h.action == "Close")
      s.action = EAGATE_ACTION_CLOSE;
   else if(h.action == "Modify")
      s.action = EAGATE_ACTION_MODIFY;
   else if(h.action == "Cancel")
      s.action = EAGATE_ACTION_CANCEL;
   else
     {
      // A newer gateway's action: refused by name, not traded as another.
      why = "action " + h.action + " (this copier does not know it)";
      return false;
     }
   if(h.order_type == "Market")
      s.order_type = EAGATE_ORDER_TYPE_MARKET;
   else if(h.order_type == "Limit")
      s.order_type = EAGATE_ORDER_TYPE_LIMIT;
   else if(h.order_type == "Stop")
      s.order_type = EAGATE_ORDER_TYPE_STOP;
   else
     {
      // The trade code places anything not Market or Limit as a Stop.
      why = "order type " + h.order_type;
      return false;
     }
   if(!EagateHttpDecimal(h.volume, s.volume_mantissa, s.volume_scale) || s.volume_scale < 0)
     {
      why = "volume " + h.volume;
      return false;
     }
   if(!EagateHttpDecimal(h.price, s.price_mantissa, s.price_scale))
     {
      why = "price " + h.price;
      return false;
     }
   if(!EagateHttpDecimal(h.stop_loss, s.stop_loss_mantissa, s.stop_loss_scale))
     {
      why = "stop loss " + h.stop_loss;
      return false;
     }
   if(!EagateHttpDecimal(h.take_profit, s.take_profit_mantissa, s.take_profit_scale))
     {
      why = "take profit " + h.take_profit;
      return false;
     }
   return true;
  }

// The value text of "key" in a flat JSON object: a string's contents
// (unescaped), a number's digits, "" for null or a missing key.
string EagateJsonField(const string json, const string key)
  {
   string needle = "\"" + key + "\":";
   int at = StringFind(json, needle);
   if(at < 0)
      return "";
   at += StringLen(needle);
   int n = StringLen(json);
   while(at < n && StringGetCharacter(json, at) == ' ')
      at++;
   if(at >= n)
      return "";
   if(StringGetCharacter(json, at) != '"')
     {
      int end = at;
      while(end < n)
        {
         ushort ch = StringGetCharacter(json, end);
         if(ch == ',' || ch == '}' || ch == ']')
            break;
         end++;
        }
      string raw = StringSubstr(json, at, end - at);
      if(raw == "null")
         return "";
      return raw;
     }
   string value = "";
   for(int i = at + 1; i < n; i++)
     {
      ushort ch = StringGetCharacter(json, i);
      if(ch == '"')
         break;
      if(ch == '\\' && i + 1 < n)
        {
         i++;
         ushort esc = StringGetCharacter(json, i);
         if(esc == 'n')
            value += "\n";
         else
            if(esc == 't')
               value += "\t";
            else
               if(esc == 'u' && i + 4 < n)
                 {
                  int code = 0;
                  for(int k = 1; k <= 4; k++)
                    {
                     int digit = EagateHexValue(StringGetCharacter(json, i + k));
                     if(digit < 0)
                        digit = EagateHexValue(StringGetCharacter(json, i + k) + 32);
                     code = code * 16 + MathMax(digit, 0);
                    }
                  value += ShortToString((ushort)code);
                  i += 4;
                 }
               else
                  if(esc == 'r')
                     value += "\r";
               else
                  value += ShortToString(esc);
         continue;
        }
      value += ShortToString(ch);
     }
   return value;
  }

// The objects of the array "key" holds, each as its JSON text.
int EagateJsonObjects(const string json, const string key, string &objects[])
  {
   ArrayResize(objects, 0);
   int at = StringFind(json, "\"" + key + "\":[");
   if(at < 0)
      return 0;
   int n = StringLen(json);
   int depth = 0;
   int start = -1;
   bool in_string = false;
   for(int i = at + StringLen(key) + 4; i < n; i++)
     {
      ushort ch = StringGetCharacter(json, i);
      if(in_string)
        {
         if(ch == '\\')
            i++;
         else
            if(ch == '"')
               in_string = false;
         continue;
        }
      if(ch == '"')
         in_string = true;
      else
         if(ch == '{')
           {
            if(depth == 0)
               start = i;
            depth++;
           }
         else
            if(ch == '}')
              {
               depth--;
               if(depth == 0 && start >= 0)
                 {
                  int k = ArraySize(objects);
                  ArrayResize(objects, k + 1);
                  objects[k] = StringSubstr(json, start, i - start + 1);
                  start = -1;
                 }
              }
            else
               if(ch == ']' && depth == 0)
                  break;
     }
   return ArraySize(objects);
  }

// The "name": number pairs of the flat object "key" holds.
int EagateJsonCounts(const string json, const string key, string &names[], ulong &values[])
  {
   ArrayResize(names, 0);
   ArrayResize(values, 0);
   string needle = "\"" + key + "\":{";
   int at = StringFind(json, needle);
   if(at < 0)
      return 0;
   int end = StringFind(json, "}", at);
   if(end < 0)
      return 0;
   string body = StringSubstr(json, at + StringLen(needle), end - at - StringLen(needle));
   string pairs[];
   int n = StringSplit(body, ',', pairs);
   for(int i = 0; i < n; i++)
     {
      string parts[];
      if(StringSplit(pairs[i], ':', parts) != 2)
         continue;
      StringReplace(parts[0], "\"", "");
      int k = ArraySize(names);
      ArrayResize(names, k + 1);
      ArrayResize(values, k + 1);
      names[k] = parts[0];
      values[k] = (ulong)StringToInteger(parts[1]);
     }
   return ArraySize(names);
  }

// Text as a JSON string, quoted and escaped.
string EagateJsonString(const string text)
  {
   string out = "\"";
   int n = StringLen(text);
   for(int i = 0; i < n; i++)
     {
      ushort ch = StringGetCharacter(text, i);
      if(ch == '"' || ch == '\\')
         out += "\\" + ShortToString(ch);
      else
         if(ch < 32)
            out += StringFormat("\\u%04x", ch);
         else
            out += ShortToString(ch);
     }
   return out + "\"";
  }

// The gateway over HTTPS: one request at a time, each signed, each answer
// verified before anything acts on it.
class EagateHttp
  {
private:
   string            m_url;          // https://host:port, no trailing slash
   string            m_device;
   uchar             m_secret[32];
   string            m_session;      // the token naming the session
   long              m_offset_ms;    // gateway clock minus this terminal's
   string            m_state_file;
   string            m_channels[];   // positions per channel, persisted
   ulong             m_positions[];
   ulong             m_next_seq;     // the next report's sequence number
   ulong             m_queue_seq[];  // reports not yet confirmed, in order
   ulong             m_queue_at[];   // when each happened, Unix ms
   string            m_queue_fields[]; // each report's JSON fields but seq and at_ms
   string            m_error;
   bool              m_stopped;
   int               m_lock;         // held open while this EA runs the device

   ulong             NowMs() { return (ulong)((long)TimeGMT() * 1000 + m_offset_ms); }
   bool              Request(const string method, const string target, const string body,
                             const int timeout_ms, int &status, string &answer);
   bool              SaveState();
   void              LoadState();
   bool              ReadState(const string name);
   bool              Complete(const string name);
   bool              SetAside(const ulong seq, const string why);
   string            ReportJson(const int i);
   bool              Renumber(const ulong taken);
   bool              Ended(const int status, const string answer);
   string            After();
   void              SetPosition(const string channel, const ulong position, const bool exactly = false);
   ulong             PositionOf(const string channel);
   bool              Queue(const string fields);

public:
                     EagateHttp() : m_session(""), m_offset_ms(0), m_next_seq(1), m_stopped(false), m_lock(INVALID_HANDLE) {}
                    ~EagateHttp() { Close(); }
   bool              Init(const string url, const string device_id, const string secret_text);
   void              Close();
   bool              OpenSession();
   int               Poll(const int wait_secs, EagateHttpSignal &signals[]);
   bool              Received(const EagateHttpSignal &signal);
   bool              Skip(const EagateHttpSignal &signal);
   void              QueueFill(const string signal_id, const ulong ticket, const string price, const string volume);
   void              QueueRejection(const string signal_id, const uint code, const string text);
   void              QueueReversal(const string signal_id, const ulong ticket);
   bool              FlushReports();
   int               Unconfirmed() { return ArraySize(m_queue_seq); }
   bool              Stopped() { return m_stopped; }
   string            LastError() { return m_error; }
  };

bool EagateHttp::Init(const string url, const string device_id, const string secret_text)
  {
   // MetaTrader keeps an EA's globals across a re-init (a new timeframe,
   // new inputs): start clean, from the state file alone.
   m_session = "";
   m_offset_ms = 0;
   m_next_seq = 1;
   m_stopped = false;
   m_error = "";
   ArrayResize(m_channels, 0);
   ArrayResize(m_positions, 0);
   ArrayResize(m_queue_seq, 0);
   ArrayResize(m_queue_at, 0);
   ArrayResize(m_queue_fields, 0);
   m_url = url;
   while(StringLen(m_url) > 0 && StringGetCharacter(m_url, StringLen(m_url) - 1) == '/')
      m_url = StringSubstr(m_url, 0, StringLen(m_url) - 1);
   m_device = device_id;
   if(eagate_parse_secret(secret_text, m_secret) == 0)
     {
      m_error = "the device secret is not an egs_ secret (47 characters, as shown once at registration)";
      return false;
     }
   m_state_file = "eagate_http_" + device_id + ".txt";
   // One EA per device in a terminal: two would share the state file, each
   // rewriting it whole from its own memory (losing the other's reports
   // and positions). The lock file is held open, without sharing, until
   // Close (OnDeinit) or the terminal's end; a crash releases it.
   Close();
   m_lock = FileOpen("eagate_http_" + device_id + ".lock", FILE_WRITE | FILE_BIN);
   if(m_lock == INVALID_HANDLE)
     {
      m_error = "another EA in this terminal runs device " + device_id + " (one EA per device)";
      return false;
     }
   LoadState();
   MathSrand((int)GetTickCount());
   return true;
  }

// Lets another EA run the device (OnDeinit).
void EagateHttp::Close()
  {
   if(m_lock != INVALID_HANDLE)
      FileClose(m_lock);
   m_lock = INVALID_HANDLE;
  }

// One signed request; false (with LastError) when it did not reach the
// gateway or its answer is not signed by the device's own secret. A
// skewed clock is corrected by the gateway's signed time and retried once.
bool EagateHttp::Request(const string method, const string target, const string body,
                         const int timeout_ms, int &status, string &answer)
  {
   for(int attempt = 0; attempt < 2; attempt++)
     {
      g_eagate_hash_failed = false;
      uchar body_bytes[];
      int body_len = StringToCharArray(body, body_bytes, 0, WHOLE_ARRAY, CP_UTF8);
      if(body_len > 0 && body_bytes[body_len - 1] == 0)
         body_len--;
      ArrayResize(body_bytes, body_len);
      string counter_name = "eagate_http_nonce_" + m_device;
      double counter = GlobalVariableCheck(counter_name) ? GlobalVariableGet(counter_name) : 0.0;
      counter += 1.0;
      GlobalVariableSet(counter_name, counter);
      GlobalVariablesFlush();
      uchar nonce[16];
      eagate_make_nonce(m_device, (ulong)counter, (ulong)GetTickCount() + (ulong)TimeLocal() * 1000,
                        MathRand(), MathRand(), nonce);
      ulong timestamp = NowMs();
      EagateText signature;
      if(eagate_sign_request(m_secret, method, target, m_device, timestamp, nonce, body_bytes, body_len, signature) == 0)
        {
         m_error = "the request is too long to sign";
         return false;
        }
      EagateText nonce_hex;
      nonce_hex.len = 0;
      eagate_append_hex(nonce_hex, nonce, 16);
      string headers = "Eagate-Device: " + m_device + "\r\n"
                       + "Eagate-Timestamp: " + StringFormat("%I64u", timestamp) + "\r\n"
                       + "Eagate-Nonce: " + CharArrayToString(nonce_hex.bytes, 0, nonce_hex.len) + "\r\n"
                       + "Eagate-Signature: " + CharArrayToString(signature.bytes, 0, signature.len) + "\r\n"
                       + "Content-Type: application/json\r\n";
      char data[];
      ArrayResize(data, body_len);
      for(int i = 0; i < body_len; i++)
         data[i] = (char)body_bytes[i];
      char result[];
      string result_headers;
      ResetLastError();
      status = WebRequest(method, m_url + target, headers, timeout_ms, data, result, result_headers);
      if(status == -1)
        {
         int code = GetLastError();
         // 4014 (MQL5) and 4060 (MQL4): the URL is not in the allowed list.
         if(code == 4014 || code == 4060)
            m_error = "WebRequest to " + m_url + " is not allowed: add it under Tools > Options > Expert Advisors";
         else
            m_error = "WebRequest failed (error " + IntegerToString(code) + ")";
         return false;
        }
      string signature_text = "";
      string lines[];
      int count = StringSplit(result_headers, '\n', lines);
      for(int i = 0; i < count; i++)
        {
         string line = lines[i];
         string lower = line;
         StringToLower(lower);
         if(StringFind(lower, "eagate-signature:") == 0)
           {
            // No StringTrim*: MQL4's return a copy, MQL5's change their
            // argument. The value is the 64 characters after the spaces.
            int start = 17;
            while(start < StringLen(line) && StringGetCharacter(line, start) == ' ')
               start++;
            signature_text = StringSubstr(line, start, 64);
           }
        }
      int result_len = ArraySize(result);
      uchar result_bytes[];
      ArrayResize(result_bytes, result_len);
      for(int i = 0; i < result_len; i++)
         result_bytes[i] = (uchar)result[i];
      if(eagate_verify_answer(m_secret, nonce, status, result_bytes, result_len, signature_text) == 0 || g_eagate_hash_failed)
        {
         // The gateway signs no refusal of a request it could not check
         // (any signature would serve a forger): shown, never acted on.
         if(status == 401 && signature_text == "")
            m_error = "the gateway refused this device: check its id and secret (or it was revoked)";
         else
            m_error = "an answer (" + IntegerToString(status) + ") not signed by the gateway for this device: "
                      "something between the terminal and the gateway changed it; ignored";
         return false;
        }
      answer = CharArrayToString(result_bytes, 0, result_len, CP_UTF8);
      if(status == 401 && EagateJsonField(answer, "title") == "clock skew" && attempt == 0)
        {
         long gateway_ms = StringToInteger(EagateJsonField(answer, "gateway_time_ms"));
         m_offset_ms = gateway_ms - (long)TimeGMT() * 1000;
         Print("eagate: this terminal's clock is off by ", m_offset_ms, " ms; using the gateway's time");
         continue;
        }
      return true;
     }
   // The gateway said twice that the clock is off: the second answer is
   // the one returned (both loops end with a return above).
   return true;
  }

// Opens a session (OnInit): the newest session of the device wins, an
// older one elsewhere is told it was replaced.
bool EagateHttp::OpenSession()
  {
   int status;
   string answer;
   if(!Request("POST", "/v1/device/session", "", 15000, status, answer))
      return false;
   if(status != 200)
     {
      m_error = "opening a session: " + IntegerToString(status) + " " + EagateJsonField(answer, "title");
      return false;
     }
   m_session = EagateJsonField(answer, "session");
   // A new state file (a new terminal, a lost file) numbers its reports
   // after those the gateway already holds for the device.
   ulong confirmed = (ulong)StringToInteger(EagateJsonField(answer, "confirmed_up_to"));
   if(m_next_seq <= confirmed)
     {
      m_next_seq = confirmed + 1;
      SaveState();
     }
   long gateway_ms = StringToInteger(EagateJsonField(answer, "gateway_time_ms"));
   m_offset_ms = gateway_ms - (long)TimeGMT() * 1000;
   return m_session != "";
  }

// Waits up to wait_secs for signals after the positions kept in the state
// file; the number of signals, or -1 (LastError says why; Stopped() when
// this EA must stop: replaced by another copy, or revoked).
int EagateHttp::Poll(const int wait_secs, EagateHttpSignal &signals[])
  {
   ArrayResize(signals, 0);
   if(m_stopped)
      return -1;
   if(m_session == "" && !OpenSession())
      return -1;
   if(wait_secs < 0 || wait_secs > 30)
     {
      m_error = "a poll waits 0 to 30 seconds";
      return -1;
     }
   string target = "/v1/device/signals?session=" + m_session + "&wait=" + IntegerToString(wait_secs);
   string after = After();
   if(after != "")
      target += "&after=" + after;
   int status;
   string answer;
   if(!Request("GET", target, "", (wait_secs + 15) * 1000, status, answer))
      return -1;
   if(Ended(status, answer))
      return -1;
   if(status != 200)
     {
      m_error = "polling: " + IntegerToString(status) + " " + EagateJsonField(answer, "title");
      return -1;
     }
   string objects[];
   int n = EagateJsonObjects(answer, "signals", objects);
   ArrayResize(signals, n);
   for(int i = 0; i < n; i++)
     {
      string o = objects[i];
      signals[i].channel = EagateJsonField(o, "channel");
      signals[i].position = (ulong)StringToInteger(EagateJsonField(o, "position"));
      signals[i].signal_id = EagateJsonField(o, "signal_id");
      signals[i].symbol = EagateJsonField(o, "symbol");
      signals[i].action = EagateJsonField(o, "action");
      signals[i].order_type = EagateJsonField(o, "order_type");
      signals[i].volume = EagateJsonField(o, "volume");
      signals[i].price = EagateJsonField(o, "price");
      signals[i].stop_loss = EagateJsonField(o, "stop_loss");
      signals[i].take_profit = EagateJsonField(o, "take_profit");
      signals[i].magic = EagateJsonField(o, "magic");
      signals[i].comment = EagateJsonField(o, "comment");
      signals[i].issued_at_ms = (ulong)StringToInteger(EagateJsonField(o, "issued_at_ms"));
      signals[i].expires_at_ms = (ulong)StringToInteger(EagateJsonField(o, "expires_at_ms"));
      signals[i].reference = EagateJsonField(o, "reference");
     }
   // Channels this answer brings nothing for stand where the gateway says,
   // which may be below the kept position (a log started anew). Channels
   // with signals move only as the EA acts on each (Received), so a
   // restart mid-way takes the rest again.
   string names[];
   ulong positions[];
   bool moved = false;
   int channels = EagateJsonCounts(answer, "positions", names, positions);
   for(int c = 0; c < channels; c++)
     {
      bool brought = false;
      for(int i = 0; i < n; i++)
         if(signals[i].channel == names[c])
            brought = true;
      if(!brought && PositionOf(names[c]) != positions[c])
        {
         SetPosition(names[c], positions[c], true);
         moved = true;
        }
     }
   // Only the channels the device follows now are named in the next poll
   // (the gateway takes at most 16).
   if(channels > 0)
      for(int k = ArraySize(m_channels) - 1; k >= 0; k--)
        {
         bool followed = false;
         for(int c = 0; c < channels; c++)
            if(names[c] == m_channels[k])
               followed = true;
         if(!followed)
           {
            for(int j = k; j + 1 < ArraySize(m_channels); j++)
              {
               m_channels[j] = m_channels[j + 1];
               m_positions[j] = m_positions[j + 1];
              }
            ArrayResize(m_channels, ArraySize(m_channels) - 1);
            ArrayResize(m_positions, ArraySize(m_positions) - 1);
            moved = true;
           }
        }
   if(moved)
      SaveState();
   return n;
  }

// The EA is about to act on a signal: its "received" report is queued and
// the signal's position recorded, in one write to the state file, so a
// restart neither loses the report nor takes the signal again. False when
// the file could not be written: then nothing changed (the signal comes
// again with the next poll) and the EA must not act on it, or a restart
// would take it again and trade it twice.
bool EagateHttp::Received(const EagateHttpSignal &signal)
  {
   string channels[];
   ulong positions[];
   ArrayCopy(channels, m_channels);
   ArrayCopy(positions, m_positions);
   // Exactly: signals come in order, so one at or below the kept position
   // means the channel's log started anew.
   SetPosition(signal.channel, signal.position, true);
   if(Queue("\"signal_id\":" + EagateJsonString(signal.signal_id) + ",\"kind\":\"received\""))
      return true;
   int last = ArraySize(m_queue_seq) - 1;
   ArrayResize(m_queue_seq, last);
   ArrayResize(m_queue_at, last);
   ArrayResize(m_queue_fields, last);
   m_next_seq--;
   ArrayResize(m_channels, 0);
   ArrayResize(m_positions, 0);
   ArrayCopy(m_channels, channels);
   ArrayCopy(m_positions, positions);
   m_error = "cannot write " + m_state_file + ": the signal waits until it can be recorded";
   return false;
  }

// Moves past a signal no report can name (its id is not one): recorded in
// the state file, so it is not polled again, with nothing queued.
bool EagateHttp::Skip(const EagateHttpSignal &signal)
  {
   SetPosition(signal.channel, signal.position, true);
   if(SaveState())
      return true;
   m_error = "cannot write " + m_state_file;
   return false;
  }

void EagateHttp::QueueFill(const string signal_id, const ulong ticket, const string price, const string volume)
  {
   Queue("\"signal_id\":" + EagateJsonString(signal_id) + ",\"kind\":\"filled\",\"ticket\":\"" + StringFormat("%I64u", ticket)
         + "\",\"price\":" + EagateJsonString(price) + ",\"volume\":" + EagateJsonString(volume));
  }

void EagateHttp::QueueRejection(const string signal_id, const uint code, const string text)
  {
   Queue("\"signal_id\":" + EagateJsonString(signal_id) + ",\"kind\":\"rejected\",\"error_code\":" + IntegerToString(code)
         + ",\"error_text\":" + EagateJsonString(StringSubstr(text, 0, 120)));
  }

// The broker undid the signal's fills reported with this ticket.
void EagateHttp::QueueReversal(const string signal_id, const ulong ticket)
  {
   Queue("\"signal_id\":" + EagateJsonString(signal_id) + ",\"kind\":\"reversed\",\"ticket\":\"" + StringFormat("%I64u", ticket) + "\"");
  }

// Queues a report and writes the state file; false if the write failed
// (the report stays queued in memory, and is written with the next one).
bool EagateHttp::Queue(const string fields)
  {
   int k = ArraySize(m_queue_seq);
   ArrayResize(m_queue_seq, k + 1);
   ArrayResize(m_queue_at, k + 1);
   ArrayResize(m_queue_fields, k + 1);
   m_queue_seq[k] = m_next_seq;
   m_queue_at[k] = NowMs();
   m_queue_fields[k] = fields;
   m_next_seq++;
   if(SaveState())
      return true;
   Print("eagate: cannot write ", m_state_file, ": a restart now would lose this report");
   return false;
  }

// Sends the queued reports, oldest first, in batches; drops those the
// gateway confirmed. True when none is left.
bool EagateHttp::FlushReports()
  {
   while(ArraySize(m_queue_seq) > 0 && !m_stopped)
     {
      if(m_session == "" && !OpenSession())
         return false;
      int n = ArraySize(m_queue_seq);
      if(n > EAGATE_HTTP_BATCH)
         n = EAGATE_HTTP_BATCH;
      string body = "{\"reports\":[";
      for(int i = 0; i < n; i++)
         body += (i > 0 ? "," : "") + ReportJson(i);
      body += "]}";
      int status;
      string answer;
      if(!Request("POST", "/v1/device/reports?session=" + m_session, body, 20000, status, answer))
         return false;
      if(Ended(status, answer))
         return false;
      if(status == 409)
        {
         // Another installation of this device stored other reports under
         // these numbers (a copied state file, a second terminal): ours are
         // not stored under them (the gateway stops at the first conflict),
         // so they take the numbers after the device's confirmed ones.
         string title = EagateJsonField(answer, "title");
         Print("eagate: ", title, "; numbering the queued reports from it on anew");
         // "report K differs from the one stored"
         ulong taken = (ulong)StringToInteger(StringSubstr(title, 7));
         if(taken == 0 || !Renumber(taken))
           {
            m_error = "reports: " + title;
            return false;
           }
         continue;
        }
      if(status == 422)
        {
         string why = EagateJsonField(answer, "title");
         ulong refused = 0;
         if(StringFind(why, "report ") == 0)
            refused = (ulong)StringToInteger(StringSubstr(why, 7));
         if(refused == 0 || !SetAside(refused, why))
           {
            m_error = "reports: 422 " + why;
            return false;
           }
         continue;
        }
      if(status != 200)
        {
         m_error = "reports: " + IntegerToString(status) + " " + EagateJsonField(answer, "title");
         return false;
        }
      ulong confirmed = (ulong)StringToInteger(EagateJsonField(answer, "confirmed_up_to"));
      int done = 0;
      while(done < ArraySize(m_queue_seq) && m_queue_seq[done] <= confirmed)
         done++;
      if(done == 0)
        {
         m_error = "reports: the gateway confirmed none of them (confirmed up to " + StringFormat("%I64u", confirmed) + ")";
         return false;
        }
      int left = ArraySize(m_queue_seq) - done;
      for(int i = 0; i < left; i++)
        {
         m_queue_seq[i] = m_queue_seq[done + i];
         m_queue_at[i] = m_queue_at[done + i];
         m_queue_fields[i] = m_queue_fields[done + i];
        }
      ArrayResize(m_queue_seq, left);
      ArrayResize(m_queue_at, left);
      ArrayResize(m_queue_fields, left);
      SaveState();
     }
   return ArraySize(m_queue_seq) == 0;
  }

string EagateHttp::After()
  {
   string after = "";
   for(int i = 0; i < ArraySize(m_channels); i++)
      after += (i > 0 ? "," : "") + m_channels[i] + ":" + StringFormat("%I64u", m_positions[i]);
   return after;
  }

ulong EagateHttp::PositionOf(const string channel)
  {
   for(int i = 0; i < ArraySize(m_channels); i++)
      if(m_channels[i] == channel)
         return m_positions[i];
   return ULONG_MAX;
  }

// Keeps a channel's position: raised only, unless exactly (the gateway's).
void EagateHttp::SetPosition(const string channel, const ulong position, const bool exactly)
  {
   for(int i = 0; i < ArraySize(m_channels); i++)
      if(m_channels[i] == channel)
        {
         if(exactly || position > m_positions[i])
            m_positions[i] = position;
         return;
        }
   int k = ArraySize(m_channels);
   ArrayResize(m_channels, k + 1);
   ArrayResize(m_positions, k + 1);
   m_channels[k] = channel;
   m_positions[k] = position;
  }

// The state file, written whole to a new file and moved over the old, so
// a crash leaves the old or the new, never half of one. A new file cut
// short (a full disk) or not moved is deleted, so a restart never takes it
// for the newest state.
bool EagateHttp::SaveState()
  {
   string temporary = m_state_file + ".new";
   int h = FileOpen(temporary, FILE_WRITE | FILE_TXT | FILE_ANSI, '\t', CP_UTF8);
   if(h == INVALID_HANDLE)
      return false;
   FileWriteString(h, "seq\t" + StringFormat("%I64u", m_next_seq) + "\n");
   for(int i = 0; i < ArraySize(m_channels); i++)
      FileWriteString(h, "pos\t" + m_channels[i] + "\t" + StringFormat("%I64u", m_positions[i]) + "\n");
   for(int i = 0; i < ArraySize(m_queue_seq); i++)
      FileWriteString(h, "rep\t" + StringFormat("%I64u", m_queue_seq[i]) + "\t" + StringFormat("%I64u", m_queue_at[i])
                      + "\t" + m_queue_fields[i] + "\n");
   // The last line: a file without it was cut short and is not read.
   FileWriteString(h, "end\n");
   FileFlush(h);
   FileClose(h);
   if(Complete(temporary) && FileMove(temporary, 0, m_state_file, FILE_REWRITE))
      return true;
   FileDelete(temporary);
   return false;
  }

// Whether a state file ends with its "end" line.
bool EagateHttp::Complete(const string name)
  {
   int h = FileOpen(name, FILE_READ | FILE_TXT | FILE_ANSI, '\t', CP_UTF8);
   if(h == INVALID_HANDLE)
      return false;
   string last = "";
   while(!FileIsEnding(h))
      last = FileReadString(h);
   FileClose(h);
   return last == "end";
  }

// The state file; or, when it is missing or cut short, a whole new one a
// crash left before it could take its place (a first start writes the
// state file at once, so a new one has a state file beside it). Beside a
// whole state file, a whole new one is what a crash left between writing
// it and moving it: the call that wrote it had not returned, so its change
// was not made, as far as the EA knows. Except reports the terminal had
// made already: fills, rejections and reversals queued after the state
// file's (the last one, or more when earlier writes failed). Those are
// kept, under their numbers, in order from the state file's next one,
// each once, so a restart loses none. A signal's "received" is not: the
// EA had not traded it, and the signal comes again.
void EagateHttp::LoadState()
  {
   string temporary = m_state_file + ".new";
   ulong made_seq[];
   ulong made_at[];
   string made_fields[];
   if(ReadState(temporary))
     {
      ArrayCopy(made_seq, m_queue_seq);
      ArrayCopy(made_at, m_queue_at);
      ArrayCopy(made_fields, m_queue_fields);
     }
   if(!ReadState(m_state_file))
     {
      if(!ReadState(temporary))
        {
         m_next_seq = 1;
         ArrayResize(m_channels, 0);
         ArrayResize(m_positions, 0);
         ArrayResize(m_queue_seq, 0);
         ArrayResize(m_queue_at, 0);
         ArrayResize(m_queue_fields, 0);
         SaveState();
        }
      return;
     }
   int added = 0;
   for(int j = 0; j < ArraySize(made_seq); j++)
     {
      if(made_seq[j] != m_next_seq || StringFind(made_fields[j], "\"kind\":\"received\"") >= 0)
         continue;
      bool queued = false;
      for(int i = 0; i < ArraySize(m_queue_seq) && !queued; i++)
         if(m_queue_at[i] == made_at[j] && m_queue_fields[i] == made_fields[j])
            queued = true;
      if(queued)
         continue;
      int k = ArraySize(m_queue_seq);
      ArrayResize(m_queue_seq, k + 1);
      ArrayResize(m_queue_at, k + 1);
      ArrayResize(m_queue_fields, k + 1);
      m_queue_seq[k] = made_seq[j];
      m_queue_at[k] = made_at[j];
      m_queue_fields[k] = made_fields[j];
      m_next_seq = made_seq[j] + 1;
      added++;
     }
   if(added > 0)
      SaveState();
   else
      FileDelete(temporary);
  }

// Reads a state file whole; false (with nothing taken) unless it ends
// with its "end" line.
bool EagateHttp::ReadState(const string name)
  {
   int h = FileOpen(name, FILE_READ | FILE_TXT | FILE_ANSI, '\t', CP_UTF8);
   if(h == INVALID_HANDLE)
      return false;
   bool ended = false;
   m_next_seq = 1;
   ArrayResize(m_channels, 0);
   ArrayResize(m_positions, 0);
   ArrayResize(m_queue_seq, 0);
   ArrayResize(m_queue_at, 0);
   ArrayResize(m_queue_fields, 0);
   while(!FileIsEnding(h))
     {
      string line = FileReadString(h);
      string parts[];
      int n = StringSplit(line, '\t', parts);
      if(line == "end")
         ended = true;
      else
         if(n >= 2 && parts[0] == "seq")
            m_next_seq = (ulong)StringToInteger(parts[1]);
         else
            if(n >= 3 && parts[0] == "pos")
               SetPosition(parts[1], (ulong)StringToInteger(parts[2]), true);
            else
               if(n >= 4 && parts[0] == "rep")
                 {
                  int k = ArraySize(m_queue_seq);
                  ArrayResize(m_queue_seq, k + 1);
                  ArrayResize(m_queue_at, k + 1);
                  ArrayResize(m_queue_fields, k + 1);
                  m_queue_seq[k] = (ulong)StringToInteger(parts[1]);
                  m_queue_at[k] = (ulong)StringToInteger(parts[2]);
                  m_queue_fields[k] = parts[3];
                 }
     }
   FileClose(h);
   return ended;
  }

// The gateway refused report `seq` as malformed (422, "report N: why"):
// it can never be stored, and it must not hold back every later one. It
// goes to a file of its own (eagate_http_<device>_refused.txt) and an
// alert says so. The queued reports after it move down one number each:
// the gateway confirms a device's reports only up to the first number it
// never stored. None of them was stored: the gateway reads a whole batch
// before it writes any of it, and every batch that held one of them held
// this one (batches are the oldest queued first).
bool EagateHttp::SetAside(const ulong seq, const string why)
  {
   int at = -1;
   for(int i = 0; i < ArraySize(m_queue_seq); i++)
      if(m_queue_seq[i] == seq)
         at = i;
   if(at < 0)
      return false;
   int h = FileOpen("eagate_http_" + m_device + "_refused.txt", FILE_READ | FILE_WRITE | FILE_TXT | FILE_ANSI, '\t', CP_UTF8);
   if(h == INVALID_HANDLE)
      return false;
   FileSeek(h, 0, SEEK_END);
   FileWriteString(h, ReportJson(at) + "\t" + why + "\n");
   FileClose(h);
   Alert("eagate: the gateway refused report ", seq, " (", why, "); kept in eagate_http_", m_device, "_refused.txt");
   for(int i = at; i + 1 < ArraySize(m_queue_seq); i++)
     {
      m_queue_seq[i] = m_queue_seq[i + 1] - 1;
      m_queue_at[i] = m_queue_at[i + 1];
      m_queue_fields[i] = m_queue_fields[i + 1];
     }
   int left = ArraySize(m_queue_seq) - 1;
   ArrayResize(m_queue_seq, left);
   ArrayResize(m_queue_at, left);
   ArrayResize(m_queue_fields, left);
   m_next_seq--;
   return SaveState();
  }

// The queued report i as the gateway takes it.
string EagateHttp::ReportJson(const int i)
  {
   return "{\"seq\":" + StringFormat("%I64u", m_queue_seq[i]) + ",\"at_ms\":" + StringFormat("%I64u", m_queue_at[i])
          + "," + m_queue_fields[i] + "}";
  }

// Another installation holds report number `taken`. The queued reports
// below it were written just before the conflict (the gateway writes in
// order and stops at the first conflict) and keep their numbers: sent
// again, they are found stored. Those from `taken` on were not stored and
// take numbers after both `taken` and the device's confirmed sequence.
bool EagateHttp::Renumber(const ulong taken)
  {
   int status;
   string answer;
   if(!Request("GET", "/v1/device/session?session=" + m_session, "", 15000, status, answer))
      return false;
   if(Ended(status, answer) || status != 200)
      return false;
   ulong next = (ulong)StringToInteger(EagateJsonField(answer, "confirmed_up_to")) + 1;
   if(next <= taken)
      next = taken + 1;
   for(int i = 0; i < ArraySize(m_queue_seq); i++)
      if(m_queue_seq[i] >= taken)
        {
         m_queue_seq[i] = next;
         next++;
        }
   if(m_next_seq < next)
      m_next_seq = next;
   return SaveState();
  }

// Whether an answer ends what the EA does with this session: replaced by
// a newer one (another chart or terminal with this device) or revoked,
// which stop the EA; or a session the gateway does not know (restored
// from an old state, say), which the next OpenSession mends.
bool EagateHttp::Ended(const int status, const string answer)
  {
   if(status != 410)
      return false;
   string title = EagateJsonField(answer, "title");
   m_error = title;
   if(StringFind(title, "no such session") == 0)
      m_session = "";
   else
      m_stopped = true;
   return true;
  }

#endif
