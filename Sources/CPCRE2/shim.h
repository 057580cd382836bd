// PCRE2 is built for three code-unit widths; Postern matches bytes (UTF-8), so
// only the 8-bit library is used. The unsuffixed names (pcre2_compile, …) are
// macros Swift cannot see: call the `_8` functions.
#ifndef POSTERN_CPCRE2_SHIM_H
#define POSTERN_CPCRE2_SHIM_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#endif
