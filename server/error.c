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
