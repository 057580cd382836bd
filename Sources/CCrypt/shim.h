// crypt(3) from libxcrypt (Debian's libcrypt1; headers in libcrypt-dev, which libc6-dev
// depends on): yescrypt ($y$), SHA-512-crypt ($6$), SHA-256-crypt ($5$), bcrypt ($2b$)…
#ifndef POSTERN_CCRYPT_SHIM_H
#define POSTERN_CCRYPT_SHIM_H

#include <crypt.h>

#endif
