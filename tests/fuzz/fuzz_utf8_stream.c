/*
 * fuzz_utf8_stream.c — server/text.c's UTF-8 hold-back and JSON strings,
 * as a stream uses them.
 *
 * The engine appends each token's bytes to the text and sends the prefix
 * that srv_utf8_complete allows (after holding back a stop string's
 * length), then everything left in the final event.  Input: a sequence of
 * records, each one control byte (low 3 bits: piece length 0..7; next 2
 * bits: bytes held back for a stop string, 0..3) and the piece's bytes.
 * Promises checked (text.h):
 *   - nothing is lost: the events' raw bytes, in order, are the text;
 *   - a character is never split: if the text is valid UTF-8, so is every
 *     event, and whatever the text, repairing event by event gives what
 *     repairing the whole text gives;
 *   - the hold-back is bounded: at most 3 bytes beyond the stop hold;
 *   - srv_json_string always yields a JSON string literal that jansson
 *     reads back as the repaired bytes, and srv_utf8_repair's output is
 *     valid UTF-8, equal to its input when that was valid.
 */
#include "fuzz_util.h"

#include <jansson.h>

#include "text.h"

/* One event's text, as the client would decode it. */
static void check_literal(const char *s, size_t n, srv_buf *decoded)
{
    srv_buf lit = {0};
    FUZZ_CHECK(srv_json_string(&lit, s, n) == 0, "out of memory");
    json_error_t je;
    json_t *v = json_loadb(lit.p, lit.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    FUZZ_CHECK(v && json_is_string(v), "not a JSON string: %s (%.*s)", je.text, (int)lit.len,
               lit.p);
    size_t rlen = 0;
    char *rep = srv_utf8_repair(s, n, &rlen);
    FUZZ_CHECK(rep != NULL, "out of memory");
    FUZZ_CHECK(fuzz_utf8_valid((const unsigned char *)rep, rlen), "repair left invalid UTF-8");
    FUZZ_CHECK(json_string_length(v) == rlen && !memcmp(json_string_value(v), rep, rlen),
               "the literal reads back as other bytes than the repaired text");
    if (fuzz_utf8_valid((const unsigned char *)s, n))
        FUZZ_CHECK(rlen == n && !memcmp(rep, s, n), "repair changed valid UTF-8");
    srv_buf_append(decoded, rep, rlen);
    free(rep);
    json_decref(v);
    srv_buf_free(&lit);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    srv_buf text = {0}, sent = {0}, decoded = {0};
    size_t released = 0, max_pending = 0;
    for (size_t i = 0; i < size;) {
        unsigned ctl = data[i++];
        size_t plen = ctl & 7, hold = ctl >> 3 & 3;
        if (plen > size - i)
            plen = size - i;
        FUZZ_CHECK(srv_buf_append(&text, data + i, plen) == 0, "out of memory");
        i += plen;
        /* engine.c's releasable(): hold back the stop strings' length,
         * then cut before an incomplete character */
        size_t n = text.len > hold ? text.len - hold : 0;
        size_t upto = released;
        if (n >= released) {
            upto = srv_utf8_complete(text.p ? text.p : "", n);
            FUZZ_CHECK(upto <= n && n - upto <= 3, "released %zu of %zu", upto, n);
            if (upto < released)
                upto = released;
        }
        const char *ev = text.p ? text.p + released : "";
        if (fuzz_utf8_valid((const unsigned char *)text.p, text.len))
            FUZZ_CHECK(fuzz_utf8_valid((const unsigned char *)ev, upto - released),
                       "an event splits a character");
        check_literal(ev, upto - released, &decoded);
        srv_buf_append(&sent, ev, upto - released);
        released = upto;
        if (text.len - released > max_pending)
            max_pending = text.len - released;
    }
    /* the final event: whatever was held back */
    const char *rest = text.p ? text.p + released : "";
    check_literal(rest, text.len - released, &decoded);
    srv_buf_append(&sent, rest, text.len - released);
    FUZZ_CHECK(sent.len == text.len && (!text.len || !memcmp(sent.p, text.p, text.len)),
               "the stream lost or changed bytes");
    size_t rlen = 0;
    char *whole = srv_utf8_repair(text.p ? text.p : "", text.len, &rlen);
    FUZZ_CHECK(whole && rlen == decoded.len && (!rlen || !memcmp(whole, decoded.p, rlen)),
               "repairing event by event differs from repairing the whole text");
    FUZZ_CHECK(max_pending <= 3 + 3, "%zu bytes pending", max_pending);
    free(whole);
    srv_buf_free(&text), srv_buf_free(&sent), srv_buf_free(&decoded);
    return 0;
}
