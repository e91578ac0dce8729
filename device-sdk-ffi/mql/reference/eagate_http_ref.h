/*
 * The C twin of eagate_http.mqh's signing code: see eagate_http_ref.c.
 * MQL's integer types by their MQL names, so the twinned code reads the same
 * in both languages.
 */
#ifndef EAGATE_HTTP_REF_H
#define EAGATE_HTTP_REF_H

typedef unsigned char uchar;
typedef unsigned long long ulong;

/* The longest text built: a canonical request with a long target. */
#define EAGATE_MAX_TEXT 2048
/* An HMAC's inner block: 64 bytes of padded key, then the message. */
#define EAGATE_MAX_INNER 2112

/* Bytes being built, and how many; a length of -1 says they overflowed. */
typedef struct {
    uchar bytes[EAGATE_MAX_TEXT];
    int len;
} EagateText;

void eagate_sha256(const uchar *data, int len, uchar *out);
void eagate_append_text(EagateText *c, const char *text);
void eagate_append_byte(EagateText *c, int b);
void eagate_append_decimal(EagateText *c, ulong value);
int eagate_hex_digit(int v);
void eagate_append_hex(EagateText *c, const uchar *bytes, int len);
void eagate_hmac_sha256(const uchar *key, int key_len, const uchar *msg, int msg_len, uchar *mac);
int eagate_sign_request(const uchar *secret, const char *method, const char *target,
                        const char *device_id, ulong timestamp_ms, const uchar *nonce,
                        const uchar *body, int body_len, EagateText *signature_hex);
int eagate_verify_answer(const uchar *secret, const uchar *nonce, int status, const uchar *body,
                         int body_len, const char *signature_hex);
void eagate_make_nonce(const char *device_id, ulong counter, ulong time_ms, int random_a,
                       int random_b, uchar *nonce);
int eagate_base64url_value(int c);
int eagate_parse_secret(const char *text, uchar *secret);
int eagate_parse_decimal(const char *text, long *mantissa, int *scale);
int eagate_parse_signal_id(const char *text, ulong *hi, ulong *lo);
int eagate_parse_unsigned(const char *text, ulong *value);

#endif
