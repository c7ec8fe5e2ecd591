/*
 * A migration's query-migrate reply, shown to people: the line that
 * updates in place on a terminal, the plain lines of a log, and the
 * summary at the end. Only the fields QEMU and godwit-vmm share are
 * needed; any that are missing (an incoming migration has no "ram",
 * QEMU has no "x-godwit-blocked") are left out of the text.
 */
#ifndef GW_TOOLS_PROGRESS_H
#define GW_TOOLS_PROGRESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct progress {
	bool tty;        /* redraw one line in place */
	bool drawn;      /* a line is on the terminal and not yet ended */
	bool printed;    /* at least one plain line is out */
	int64_t last_ms; /* monotonic time of the last plain line */
	int64_t last_round;
	char last_status[32];
};

void progress_init(struct progress *p, bool tty);
/* Show one poll's reply: redraw on a terminal; on a log, print a line if
 * the round or status changed and a second has passed since the last. */
void progress_update(struct progress *p, json_t *info);
/* End the updating line so that what follows starts on a fresh one. */
void progress_end(struct progress *p);

/* "status, round: percent, sent, left, rates, downtime, blocked" as one line. */
void migration_print_line(FILE *f, json_t *info);
/* Status, times, bytes, rounds, throughput, pages, error: several lines. */
void migration_print_summary(FILE *f, json_t *info);

/* Whether a query-migrate status is one a migration never leaves. */
bool migration_status_final(const char *status);

#endif
