/*
 * Console output on COM1. Every port access is a VM exit, so lines are
 * formatted in memory first and the console is kept for short, rare lines.
 */
#include "rt.h"

#define COM1 0x3f8
#define UART_LSR (COM1 + 5)
#define UART_LSR_THRE 0x20 /* transmit holding register empty */

struct line {
	char buf[256];
	size_t len;
};

static struct gw_lock console_lock;

static void put(struct line *l, char c)
{
	if (l->len < sizeof(l->buf))
		l->buf[l->len++] = c;
}

static void put_number(struct line *l, uint64_t v, unsigned base, bool negative,
		       unsigned width, char pad)
{
	char digits[20]; /* 2^64 has 20 decimal digits */
	unsigned n = 0;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (negative && pad == '0')
		put(l, '-');
	for (unsigned w = n + negative; w < width; w++)
		put(l, pad);
	if (negative && pad != '0')
		put(l, '-');
	while (n)
		put(l, digits[--n]);
}

static void format(struct line *l, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(l, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		unsigned width = 0, longs = 0;
		size_t precision = SIZE_MAX; /* %.*s: the command line is not NUL-separated */

		if (*fmt == '0')
			pad = *fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (unsigned)(*fmt++ - '0');
		if (fmt[0] == '.' && fmt[1] == '*') {
			precision = (size_t)va_arg(ap, int);
			fmt += 2;
		}
		while (*fmt == 'l') {
			longs++;
			fmt++;
		}
		switch (*fmt) {
		case 'd': {
			int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
			/* Negate in unsigned arithmetic: -INT64_MIN overflows. */
			uint64_t mag = v < 0 ? -(uint64_t)v : (uint64_t)v;

			put_number(l, mag, 10, v < 0, width, pad);
			break;
		}
		case 'u':
		case 'x': {
			uint64_t v = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);

			put_number(l, v, *fmt == 'x' ? 16 : 10, false, width, pad);
			break;
		}
		case 's':
			for (const char *s = va_arg(ap, const char *); precision && *s; s++, precision--)
				put(l, *s);
			break;
		case 'c':
			put(l, (char)va_arg(ap, int));
			break;
		case '%':
			put(l, '%');
			break;
		default: /* unknown conversion: show it rather than guess */
			put(l, '%');
			if (!*fmt)
				return;
			put(l, *fmt);
			break;
		}
	}
}

static void serial_write(const struct line *l)
{
	for (size_t i = 0; i < l->len; i++) {
		while (!(gw_inb(UART_LSR) & UART_LSR_THRE))
			gw_pause();
		gw_outb(COM1, (uint8_t)l->buf[i]);
	}
}

static void vprint(const char *fmt, va_list ap)
{
	struct line l;

	l.len = 0;
	format(&l, fmt, ap);
	gw_lock(&console_lock);
	serial_write(&l);
	gw_unlock(&console_lock);
}

void gw_printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint(fmt, ap);
	va_end(ap);
}

void gw_fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint(fmt, ap);
	va_end(ap);
	gw_exit(GW_EXIT_BAD_CONFIG);
}
