/*
 * error.c — srv_error_set (error.h); no HTTP here, so that validators and
 * the fuzz targets that call them link without libmicrohttpd.
 */
#include "error.h"

#include <stdarg.h>
#include <string.h>

int srv_error_set(srv_error *e, int status, const char *code, const char *field,
                  const char *fmt, ...)
{
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

const char *srv_openai_error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}
