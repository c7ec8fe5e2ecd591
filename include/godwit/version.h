/*
 * Which libgodwit a program runs with. A program built against one
 * version's headers may load a later libgodwit.so.0 (same soname): the
 * string is the one of the library actually loaded, for logs and
 * `--version` output, never for feature tests (the functions a version
 * adds are in its headers and in lib/libgodwit.map).
 */
#ifndef GODWIT_VERSION_H
#define GODWIT_VERSION_H

#include <godwit/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "MAJOR.MINOR.PATCH", e.g. "0.1.0": static storage, never NULL. */
GW_API const char *gw_version(void);

#ifdef __cplusplus
}
#endif

#endif
