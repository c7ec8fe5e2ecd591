/*
 * What the fuzzers do to every input a second time: recompute each CRC and
 * page hash of the records that fit, as an honest writer would, so that
 * mutations reach the parsers and checks behind the checksums instead of
 * all dying at the first CRC.
 */
#ifndef GW_FUZZ_RESEAL_H
#define GW_FUZZ_RESEAL_H

#include <stddef.h>

void reseal(unsigned char *stream, size_t len);

#endif
