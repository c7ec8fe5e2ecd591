/*
 * What libgodwit.so exports, and how its public structs may grow.
 *
 * The library is built with -fvisibility=hidden and a linker version
 * script, so a function or variable is part of the shared library only
 * when both say so:
 *
 *   - its declaration in a public header (include/godwit/) starts with
 *     GW_API;
 *   - its name is listed in lib/libgodwit.map.
 *
 * Everything else (the headers in lib/, static functions) stays inside
 * the library; the VMM, the tools and the unit tests reach the internals
 * through the static library. A new public function needs both marks:
 * the test install-exports fails when the exported symbols, the map and
 * the declarations in the public headers disagree.
 *
 * Growing a public struct without breaking programs built against an
 * older header: structs the caller allocates end in reserved words.
 *
 *   - A struct the caller fills and the library reads (a parameter, a
 *     registration, a table) is refused with -EINVAL when a reserved
 *     word is not zero. Initialize it with designated initializers or
 *     = { 0 } (the GW_FIELD and GW_VMSTATE macros do), never field by
 *     field on the stack: a later version gives a meaning to those words
 *     in which 0 is today's behaviour.
 *   - A struct the library fills keeps its reserved words for fields of
 *     later versions; do not read them.
 *
 * New fields take reserved words from the front of the reserved array,
 * so sizes and offsets stay as they are. Structs the library allocates
 * and returns by pointer (struct gw_config) grow at the end instead.
 */
#ifndef GODWIT_EXPORT_H
#define GODWIT_EXPORT_H

#define GW_API __attribute__((visibility("default")))

#endif
