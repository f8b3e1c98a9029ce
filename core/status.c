/* status.c — messages and names for tfm_status (see tfm/status.h). */
#include "tfm/status.h"

const char *tfm_strerror(tfm_status s)
{
    switch (s) {
#define XX(name, val, msg) case TFM_##name: return msg;
        TFM_STATUS_MAP(XX)
#undef XX
    }
    return "unknown status";
}

const char *tfm_status_name(tfm_status s)
{
    switch (s) {
#define XX(name, val, msg) case TFM_##name: return #name;
        TFM_STATUS_MAP(XX)
#undef XX
    }
    return "UNKNOWN";
}
