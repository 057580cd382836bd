// libmaxminddb. MMDB_get_value is variadic and unavailable to Swift: use
// MMDB_aget_value with a NULL-terminated path array.
#ifndef POSTERN_CMAXMINDDB_SHIM_H
#define POSTERN_CMAXMINDDB_SHIM_H

#include <maxminddb.h>

#endif
