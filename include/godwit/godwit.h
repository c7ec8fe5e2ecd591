/*
 * libgodwit: live migration and snapshots of virtual machines, independent
 * of any hypervisor. Include this for everything, or the one header of the
 * concept you use:
 *
 *   error.h      struct gw_error and the 0 / -errno convention
 *   migration.h  the migration object: RAM blocks, sections, pause/resume
 *   payload.h    what a device's save/load callbacks write and read
 *   vmstate.h    declarative device state (fields) and VMDESC decoding
 *   io.h         buffered, zero-copy byte I/O over a file descriptor
 *   stream.h     saving and loading a guest as a godwit stream
 *   walk.h       walking a stream without device code (the analyzer)
 *   format.h     the numbers of the stream format (docs/format.md)
 *   precopy.h    live migration: the pre-copy engine and the destination
 *   status.h     a migration's status, with QEMU's names
 *   channel.h    transports named by URIs: tcp, unix, fd, exec, file
 *   tracking.h   dirty-page tracking: what a VMM provides (gw_dirty_ops)
 *   dirty.h      the manual dirty-page tracker (programs that mark their writes)
 *   version.h    gw_version(), the version of the library a program runs with
 */
#ifndef GODWIT_GODWIT_H
#define GODWIT_GODWIT_H

#include <godwit/dirty.h>
#include <godwit/error.h>
#include <godwit/format.h>
#include <godwit/io.h>
#include <godwit/migration.h>
#include <godwit/payload.h>
#include <godwit/channel.h>
#include <godwit/precopy.h>
#include <godwit/status.h>
#include <godwit/stream.h>
#include <godwit/tracking.h>
#include <godwit/version.h>
#include <godwit/vmstate.h>
#include <godwit/walk.h>

#endif
