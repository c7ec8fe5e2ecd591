/*
 * The hello of cpr-transfer (lib/format/cpr.h has its layout): the
 * source sends its CONFIG, its CPR table and its memfds in one message;
 * the destination checks that it can take the machine, adopts the RAM,
 * and answers ADOPTED. All of it happens while the source's guest runs:
 * the memfds are shared, so the new process may map them at once.
 */
#ifndef GW_LIB_ENGINE_CPR_HELLO_H
#define GW_LIB_ENGINE_CPR_HELLO_H

#include <stdbool.h>
#include <stdint.h>

#include <godwit/error.h>

#include "lib/cancel.h"
#include "lib/internal.h"

int gw_cpr_hello_send(const struct gw_migration *m, struct gw_cancel *c, int timeout_ms,
		      struct gw_error *err);

/* Whether the first GW_CPR_HELLO_MAGIC_LEN bytes of a stream open a hello. */
bool gw_cpr_hello_is(const unsigned char *first);

/*
 * Read the hello on c's socket (the fds with its first byte), check that
 * this VMM can take the source's machine, and adopt its RAM
 * (gw_cpr_adopt). *adopted gets the bytes adopted. Fds not adopted are
 * closed. Does not answer: the caller says ADOPTED or FAILED.
 */
int gw_cpr_hello_receive(struct gw_migration *m, struct gw_cancel *c, int timeout_ms,
			 uint64_t *adopted, struct gw_error *err);

#endif
