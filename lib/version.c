/*
 * gw_version(): the project version meson writes into gw_version.h, which
 * the VMM and the tools print too.
 */
#include <godwit/version.h>

#include "gw_version.h"

const char *gw_version(void)
{
	return GW_VERSION;
}
