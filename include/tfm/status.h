/*
 * tfm/status.h — status codes of the transformer core.
 *
 * Every core function that can fail returns a tfm_status: 0 (TFM_OK) on
 * success, a negative code otherwise; results come back through
 * out-parameters.  The list is one X-macro (libuv's UV_ERRNO_MAP idea) so the
 * enum, the names and the messages cannot drift apart.  Bad input never
 * aborts and never exits: it becomes one of these codes, which the server
 * maps to HTTP in one place.
 */
#ifndef TFM_STATUS_H
#define TFM_STATUS_H

#define TFM_STATUS_MAP(XX)                                                    \
    XX(OK, 0, "ok")                                                           \
    XX(E_INVALID, -1, "invalid argument")                                     \
    XX(E_NOMEM, -2, "out of memory")                                          \
    XX(E_RANGE, -3, "out of range")                                           \
    XX(E_IO, -4, "i/o error")                                                 \
    XX(E_FORMAT, -5, "malformed file")                                        \
    XX(E_TRUNCATED, -6, "file truncated")                                     \
    XX(E_SHAPE, -7, "tensor shape mismatch")                                  \
    XX(E_UNSUPPORTED, -8, "unsupported")                                      \
    XX(E_NOTFOUND, -9, "not found")                                           \
    XX(E_CANCELLED, -10, "cancelled")                                         \
    XX(E_INTERNAL, -11, "internal error")

typedef enum tfm_status {
#define TFM__STATUS_ENUM(name, val, msg) TFM_##name = (val),
    TFM_STATUS_MAP(TFM__STATUS_ENUM)
#undef TFM__STATUS_ENUM
} tfm_status;

/* Human-readable message for a status ("invalid argument"); never NULL. */
const char *tfm_strerror(tfm_status s);

/* Symbolic name of a status ("E_INVALID"); never NULL. */
const char *tfm_status_name(tfm_status s);

#endif /* TFM_STATUS_H */
