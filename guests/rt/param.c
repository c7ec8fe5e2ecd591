/*
 * The command line: words separated by spaces, each "key=value" (or a
 * bare "key"). The VMM passes its --append string through untouched, so
 * each guest knows only its own keys.
 */
#include "rt.h"

struct word {
	const char *key, *val;
	size_t key_len, val_len;
};

/* The next word at or after *p; false at the end of the line. The line
 * is NUL-terminated, but never trusted to be: the bound is the buffer. */
static bool next_word(const struct gw_guest_config *cfg, const char **p, struct word *w)
{
	const char *end = cfg->cmdline + GW_CMDLINE_MAX;
	const char *s = *p;

	while (s < end && *s == ' ')
		s++;
	if (s == end || !*s)
		return false;
	w->key = s;
	while (s < end && *s && *s != ' ' && *s != '=')
		s++;
	w->key_len = (size_t)(s - w->key);
	if (s < end && *s == '=')
		s++;
	w->val = s;
	while (s < end && *s && *s != ' ')
		s++;
	w->val_len = (size_t)(s - w->val);
	*p = s;
	return true;
}

static bool key_is(const struct word *w, const char *key)
{
	return gw_param_is(w->key, w->key_len, key);
}

bool gw_param_is(const char *val, size_t len, const char *word)
{
	size_t i = 0;

	for (; i < len; i++)
		if (word[i] != val[i])
			return false;
	return word[i] == '\0';
}

const char *gw_param(const struct gw_guest_config *cfg, const char *key, size_t *len)
{
	const char *p = cfg->cmdline, *found = NULL;
	struct word w;

	while (next_word(cfg, &p, &w)) {
		if (key_is(&w, key)) {
			found = w.val;
			*len = w.val_len;
		}
	}
	return found;
}

static int digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static unsigned suffix_shift(char c)
{
	switch (c | 0x20) { /* either case */
	case 'k': return 10;
	case 'm': return 20;
	case 'g': return 30;
	case 't': return 40;
	}
	return 0;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
	unsigned base = 10;
	size_t i = 0, digits = 0;
	uint64_t v = 0;

	if (len > 2 && s[0] == '0' && (s[1] | 0x20) == 'x') {
		base = 16;
		i = 2;
	}
	for (; i < len; i++, digits++) {
		int d = digit_value(s[i]);

		if (d < 0 || (unsigned)d >= base)
			break;
		if (v > (UINT64_MAX - (unsigned)d) / base)
			return false;
		v = v * base + (unsigned)d;
	}
	if (!digits)
		return false;
	if (i < len) {
		unsigned shift = suffix_shift(s[i]);

		if (!shift || i + 1 != len || v > UINT64_MAX >> shift)
			return false;
		v <<= shift;
	}
	*out = v;
	return true;
}

uint64_t gw_param_u64(const struct gw_guest_config *cfg, const char *key, uint64_t def)
{
	size_t len;
	const char *val = gw_param(cfg, key, &len);
	uint64_t v;

	if (!val)
		return def;
	if (!parse_u64(val, len, &v))
		gw_fatal("guest: %s=%.*s: expected a number below 2^64 such as 4096, 0x1000 or 64M\n",
			 key, (int)len, val);
	return v;
}

void gw_param_warn_unknown(const struct gw_guest_config *cfg, const char *const *known)
{
	const char *p = cfg->cmdline;
	struct word w;

	while (next_word(cfg, &p, &w)) {
		const char *const *k = known;

		while (*k && !key_is(&w, *k))
			k++;
		if (!*k)
			gw_printf("guest: ignoring unknown parameter '%.*s'\n",
				  (int)w.key_len, w.key);
	}
}
