// Hyperscan (libhyperscan-dev; libvectorscan-dev where Hyperscan is not built) for
// PosternNative's HyperscanDatabase.
#include <hs/hs.h>
