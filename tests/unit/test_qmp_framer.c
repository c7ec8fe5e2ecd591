/*
 * godwit-vmm's QMP input framer (vmm/qmp/qmp_framer.c), without a socket:
 * the byte streams tests/e2e/test_qmp_robustness.py sends through one,
 * fed here in every split a socket could deliver. Whole values come out
 * exactly as sent, wherever the reads cut them; several in one read come
 * out in order; oversized and overdeep ones are refused once and skipped
 * exactly; garbage costs one error and the framer is ready again after
 * the next newline; and memory stays bounded by the message limit.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "vmm/qmp/qmp_framer.h"

/* Resynchronises the framer from any state: a control byte is refused
 * both inside and outside strings, and the newline ends the skip. */
#define RESYNC "\x01\n"

#define TOO_LONG "message longer than 1048576 bytes"
#define TOO_DEEP "nesting deeper than 1024 levels"

struct event {
	bool error;
	char *text; /* the value's bytes, or the error */
	size_t len;
};

struct events {
	struct event *e;
	size_t n, cap;
};

static void push(struct events *ev, bool error, const char *text, size_t len)
{
	if (ev->n == ev->cap) {
		ev->cap = ev->cap ? 2 * ev->cap : 16;
		ev->e = realloc(ev->e, ev->cap * sizeof(*ev->e));
		CHECK(ev->e);
	}
	struct event *e = &ev->e[ev->n++];
	e->error = error;
	e->len = len;
	e->text = malloc(len + 1);
	CHECK(e->text);
	memcpy(e->text, text, len);
	e->text[len] = '\0';
}

static void clear(struct events *ev)
{
	for (size_t i = 0; i < ev->n; i++)
		free(ev->e[i].text);
	ev->n = 0;
}

/* One read, as the server takes it: feed until the framer wants more. */
static void feed(struct qmp_framer *f, const char *p, size_t n, struct events *ev)
{
	for (;;) {
		size_t used, len;
		int frame = qmp_framer_feed(f, p, n, &used);
		CHECK(frame >= 0);
		CHECK(used <= n);
		p += used;
		n -= used;
		/* Bounded by the limit, whatever the input. */
		CHECK(f->msg.len <= QMP_MAX_MESSAGE);
		if (frame == QMP_FRAME_MORE) {
			CHECK(n == 0);
			return;
		}
		if (frame == QMP_FRAME_VALUE) {
			const char *text = qmp_framer_value(f, &len);
			CHECK(len > 0);
			push(ev, false, text, len);
		} else {
			CHECK(frame == QMP_FRAME_ERROR);
			push(ev, true, qmp_framer_error(f), strlen(qmp_framer_error(f)));
		}
	}
}

static void feed_str(struct qmp_framer *f, const char *s, struct events *ev)
{
	feed(f, s, strlen(s), ev);
}

static void check_value(const struct events *ev, size_t i, const char *want, size_t len)
{
	if (i >= ev->n)
		FAIL("event %zu of %zu: missing, expected the value %.60s", i, ev->n, want);
	const struct event *e = &ev->e[i];
	if (e->error || e->len != len || memcmp(e->text, want, len))
		FAIL("event %zu: %s %.60s (%zu bytes), expected the value %.60s (%zu bytes)", i,
		     e->error ? "error" : "value", e->text, e->len, want, len);
}

static void check_error(const struct events *ev, size_t i, const char *want)
{
	if (i >= ev->n)
		FAIL("event %zu of %zu: missing, expected the error '%s'", i, ev->n, want);
	const struct event *e = &ev->e[i];
	if (!e->error || strcmp(e->text, want))
		FAIL("event %zu: %s %.60s, expected the error '%s'", i,
		     e->error ? "error" : "value", e->text, want);
}

/* s repeated n times, then tail. */
static char *repeat(const char *s, size_t n, const char *tail, size_t *len)
{
	size_t k = strlen(s), t = strlen(tail);
	char *out = malloc(k * n + t + 1);
	CHECK(out);
	for (size_t i = 0; i < n; i++)
		memcpy(out + i * k, s, k);
	memcpy(out + k * n, tail, t + 1);
	*len = k * n + t;
	return out;
}

/* {"execute": "query-status", "id": N}: a value the server would answer,
 * to show the framer is back in step after what came before. */
static void check_in_step(struct qmp_framer *f, struct events *ev, int id)
{
	char msg[64];
	int n = snprintf(msg, sizeof(msg), "{\"execute\": \"query-status\", \"id\": %d}", id);
	size_t before = ev->n;
	feed_str(f, msg, ev);
	CHECK(ev->n == before + 1);
	check_value(ev, before, msg, (size_t)n);
}

static void test_whole_values(void)
{
	static const struct {
		const char *in, *value; /* value NULL: the input itself */
	} cases[] = {
		{"{\"execute\": \"query-status\"}", NULL},
		{"  {\"execute\":\"query-status\",\"id\":\"\\u2603\xe2\x98\x83\"}\r\n",
		 "{\"execute\":\"query-status\",\"id\":\"\\u2603\xe2\x98\x83\"}"},
		/* Brackets and quotes inside strings do not count. */
		{"{\"a\": \"}]{[\", \"b\": [\"\\\"]\", \"\\\\\"]}", NULL},
		{"[1, 2.5e-3, \"\\\\\", {}]", NULL},
		{"[]", NULL},
		{"\"execute\"", NULL},
		/* Bare words end at a delimiter; jansson judges them. */
		{"123 ", "123"},
		{"null\n", "null"},
		{"true\t", "true"},
		{"-1.5e3\r", "-1.5e3"},
		{"foo\n", "foo"},
		{"1.2.3 ", "1.2.3"},
		{"0x10\n", "0x10"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct qmp_framer f;
		struct events ev = {0};
		const char *want = cases[i].value ? cases[i].value : cases[i].in;
		qmp_framer_init(&f);
		feed_str(&f, cases[i].in, &ev);
		CHECK(ev.n == 1);
		check_value(&ev, 0, want, strlen(want));
		check_in_step(&f, &ev, (int)i);
		clear(&ev);
		free(ev.e);
		qmp_framer_release(&f);
	}

	/* A word at the end of a read waits for the byte that ends it, and a
	 * bracket or quote that ends it also starts the next value. */
	struct qmp_framer f;
	struct events ev = {0};
	qmp_framer_init(&f);
	feed_str(&f, "123", &ev);
	CHECK(ev.n == 0);
	feed_str(&f, "{\"a\":1}true\"x\"1[2]null", &ev);
	CHECK(ev.n == 6);
	check_value(&ev, 0, "123", 3);
	check_value(&ev, 1, "{\"a\":1}", 7);
	check_value(&ev, 2, "true", 4);
	check_value(&ev, 3, "\"x\"", 3);
	check_value(&ev, 4, "1", 1);
	check_value(&ev, 5, "[2]", 3);
	/* "null" still waits: only a delimiter ends it. */
	feed_str(&f, "\n", &ev);
	CHECK(ev.n == 7);
	check_value(&ev, 6, "null", 4);
	clear(&ev);
	free(ev.e);
	qmp_framer_release(&f);
}

/* The messages of the e2e byte-by-byte test: escapes, UTF-8 in strings,
 * numbers of every shape, leading whitespace. */
static const char *const split_messages[] = {
	"{\"execute\": \"pmemsave\", \"arguments\": {\"val\": -1, \"size\": 1.5e3, "
	"\"filename\": \"\\u00e9x\\\"y\"}, \"id\": [true, false, null, -0.5, \"\xc3\xa9\"]}",
	"  {\"execute\":\"query-status\",\"id\":\"\\u2603\xe2\x98\x83\"}\r\n",
	"{\"execute\": \"no-such\", \"id\": -12345678901234}",
	"[1, 2.5e-3, \"\\\\\", {}]",
	"\"a \\\"quoted\\\" string \\\\\"",
};

/* The value in a message: without the whitespace around it. */
static const char *trimmed(const char *msg, size_t *len)
{
	while (*msg == ' ')
		msg++;
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\r' || msg[n - 1] == '\n'))
		n--;
	*len = n;
	return msg;
}

static void test_split_at_every_byte(void)
{
	struct qmp_framer f;
	struct events ev = {0};
	qmp_framer_init(&f);
	/* One byte per read, three rounds on one framer. */
	for (int round = 0; round < 3; round++) {
		for (size_t m = 0; m < sizeof(split_messages) / sizeof(split_messages[0]); m++) {
			const char *raw = split_messages[m];
			size_t len, n = strlen(raw);
			const char *want = trimmed(raw, &len);
			for (size_t i = 0; i < n; i++) {
				feed(&f, raw + i, 1, &ev);
				/* An object, array or string is whole at its last byte. */
				CHECK(ev.n == (raw + i + 1 >= want + len ? 1u : 0u));
			}
			check_value(&ev, 0, want, len);
			clear(&ev);
		}
	}
	/* Two reads, cut at every byte. */
	for (size_t m = 0; m < sizeof(split_messages) / sizeof(split_messages[0]); m++) {
		const char *raw = split_messages[m];
		size_t len, n = strlen(raw);
		const char *want = trimmed(raw, &len);
		for (size_t cut = 0; cut <= n; cut++) {
			feed(&f, raw, cut, &ev);
			feed(&f, raw + cut, n - cut, &ev);
			CHECK(ev.n == 1);
			check_value(&ev, 0, want, len);
			clear(&ev);
		}
	}
	free(ev.e);
	qmp_framer_release(&f);
}

static void test_many_in_one_read(void)
{
	struct qmp_framer f;
	struct events ev = {0};
	char *batch = malloc(400 * 64);
	size_t at[401], len = 0;
	CHECK(batch);
	qmp_framer_init(&f);
	/* No separators at all, as QEMU accepts them. */
	for (int i = 0; i < 400; i++) {
		const char *fmt = i % 2 ? "{\"execute\": \"nope\", \"id\": %d}"
					: "{\"execute\": \"query-status\", \"arguments\": {\"i\": [%d]}}";
		at[i] = len;
		len += (size_t)sprintf(batch + len, fmt, i);
	}
	at[400] = len;
	feed(&f, batch, len, &ev);
	CHECK(ev.n == 400);
	for (size_t i = 0; i < 400; i++)
		check_value(&ev, i, batch + at[i], at[i + 1] - at[i]);
	clear(&ev);

	/* Values of every shape, one per line, in one read. */
	const char *mixed = "[1, 2]\n123 \n\"execute\"\nnull \ntrue \n-1.5e3 \n[]\n{}\n";
	static const char *const want[] = {"[1, 2]", "123", "\"execute\"", "null", "true",
					   "-1.5e3", "[]", "{}"};
	feed_str(&f, mixed, &ev);
	CHECK(ev.n == 8);
	for (size_t i = 0; i < 8; i++)
		check_value(&ev, i, want[i], strlen(want[i]));
	clear(&ev);
	free(ev.e);
	free(batch);
	qmp_framer_release(&f);
}

/* Feed in reads of 64 KiB, as the server's socket reads deliver it. */
static void feed_in_reads(struct qmp_framer *f, const char *p, size_t n, struct events *ev)
{
	for (size_t off = 0; off < n; off += 65536)
		feed(f, p + off, n - off < 65536 ? n - off : 65536, ev);
}

static void test_oversized(void)
{
	struct qmp_framer f;
	struct events ev = {0};
	size_t len;
	qmp_framer_init(&f);

	/* Refused once, and skipped exactly: the next message is served. */
	const size_t sizes[] = {QMP_MAX_MESSAGE, 2 * QMP_MAX_MESSAGE, 4 * QMP_MAX_MESSAGE + 17};
	for (size_t i = 0; i < 3; i++) {
		char *big = repeat("A", sizes[i], "\"}, \"id\": 1}\n", &len);
		const char *head = "{\"execute\": \"query-status\", \"arguments\": {\"s\": \"";
		feed_str(&f, head, &ev);
		feed_in_reads(&f, big, len, &ev);
		CHECK(ev.n == 1);
		check_error(&ev, 0, TOO_LONG);
		/* What a burst took is given back. */
		CHECK(f.msg.cap <= BUF_KEEP);
		check_in_step(&f, &ev, (int)i);
		clear(&ev);
		free(big);
	}

	/* The limit is the message's bytes: QMP_MAX_MESSAGE pass, one more
	 * does not, even when that one is the byte that closes the value. */
	for (size_t extra = 0; extra < 2; extra++) {
		char *msg = repeat("x", QMP_MAX_MESSAGE - 2 + extra, "\"}", &len);
		memcpy(msg, "{\"s\":\"", 6);
		CHECK(len == QMP_MAX_MESSAGE + extra);
		feed_in_reads(&f, msg, len, &ev);
		CHECK(ev.n == 1);
		if (extra)
			check_error(&ev, 0, TOO_LONG);
		else
			check_value(&ev, 0, msg, len);
		check_in_step(&f, &ev, 100 + (int)extra);
		clear(&ev);
		free(msg);
	}

	/* A huge top-level string, a huge bare word. */
	char *str = repeat("D", 3 * QMP_MAX_MESSAGE, "\"\n", &len);
	str[0] = '"';
	feed_in_reads(&f, str, len, &ev);
	CHECK(ev.n == 1);
	check_error(&ev, 0, TOO_LONG);
	clear(&ev);
	free(str);
	char *word = repeat("E", 2 * QMP_MAX_MESSAGE, "\n", &len);
	feed_in_reads(&f, word, len, &ev);
	CHECK(ev.n == 1);
	check_error(&ev, 0, TOO_LONG);
	check_in_step(&f, &ev, 200);
	clear(&ev);
	free(word);

	/* Closed in the middle of one: release frees what it held. */
	char *part = repeat("F", QMP_MAX_MESSAGE / 2, "", &len);
	part[0] = '"';
	feed(&f, part, len, &ev);
	CHECK(ev.n == 0 && f.msg.len == len);
	free(part);
	free(ev.e);
	qmp_framer_release(&f);
}

static void test_nesting(void)
{
	struct qmp_framer f;
	struct events ev = {0};
	size_t len;
	qmp_framer_init(&f);

	static const char *const pairs[][2] = {{"[", "]"}, {"{", "}"}, {"{\"a\":", "}"}};
	for (size_t i = 0; i < 3; i++) {
		char *open = repeat(pairs[i][0], 100000, "", &len);
		size_t close_len;
		char *close = repeat(pairs[i][1], 100000, "\n", &close_len);
		feed_in_reads(&f, open, len, &ev);
		CHECK(ev.n == 1);
		check_error(&ev, 0, TOO_DEEP);
		/* Nothing kept past the refusal. */
		CHECK(f.msg.len <= QMP_MAX_NESTING * strlen(pairs[i][0]));
		feed_in_reads(&f, close, close_len, &ev);
		CHECK(ev.n == 1);
		check_in_step(&f, &ev, (int)i);
		clear(&ev);
		free(open);
		free(close);
	}

	/* QMP_MAX_NESTING levels pass (jansson then parses them), one more does not. */
	for (size_t extra = 0; extra < 2; extra++) {
		size_t n = QMP_MAX_NESTING + extra;
		char *msg = malloc(2 * n + 1);
		CHECK(msg);
		memset(msg, '[', n);
		memset(msg + n, ']', n);
		feed(&f, msg, 2 * n, &ev);
		CHECK(ev.n == 1);
		if (extra)
			check_error(&ev, 0, TOO_DEEP);
		else
			check_value(&ev, 0, msg, 2 * n);
		check_in_step(&f, &ev, 10 + (int)extra);
		clear(&ev);
		free(msg);
	}

	/* Refused for its depth, then a stray byte in it: still one error,
	 * and the framer is in step after the newline. */
	char *deep = repeat("[", 2000, RESYNC, &len);
	feed(&f, deep, len, &ev);
	CHECK(ev.n == 1);
	check_error(&ev, 0, TOO_DEEP);
	check_in_step(&f, &ev, 20);
	clear(&ev);

	/* Opened and never closed, then gone. */
	feed(&f, deep, 2000, &ev);
	CHECK(ev.n == 1);
	check_error(&ev, 0, TOO_DEEP);
	clear(&ev);
	free(deep);
	free(ev.e);
	qmp_framer_release(&f);
}

/* Offsets i such that whole[0..i) ends inside a JSON string. */
static bool ends_in_string(const char *whole, size_t cut)
{
	bool inside = false, escape = false;
	for (size_t i = 0; i < cut; i++) {
		char ch = whole[i];
		if (inside) {
			if (escape)
				escape = false;
			else if (ch == '\\')
				escape = true;
			else if (ch == '"')
				inside = false;
		} else if (ch == '"') {
			inside = true;
		}
	}
	return inside;
}

static void test_truncated(void)
{
	const char *whole = "{\"execute\": \"pmemsave\", \"arguments\": {\"val\": -12, "
			    "\"size\": 1.5e3, \"filename\": \"a\\\"\\u00e9\\\\b\"}, "
			    "\"id\": [true, false, null, \"\xc3\xa9\"]}";
	size_t n = strlen(whole);
	struct qmp_framer f;
	struct events ev = {0};
	qmp_framer_init(&f);
	/* Cut inside a string (after a backslash too), then a newline: a raw
	 * newline is refused there, so the message is refused at once. Cut
	 * outside one, a newline is whitespace, and only a byte refused
	 * everywhere ends it. */
	for (size_t cut = 1; cut < n; cut++) {
		bool in_string = ends_in_string(whole, cut);
		feed(&f, whole, cut, &ev);
		feed_str(&f, in_string ? "\n" : RESYNC, &ev);
		CHECK(ev.n == 1);
		check_error(&ev, 0, in_string ? "stray byte 0x0a in string" : "stray byte 0x01");
		clear(&ev);
	}
	check_in_step(&f, &ev, 1);
	clear(&ev);
	free(ev.e);
	qmp_framer_release(&f);
}

/* xorshift64: the same garbage on every run. */
static uint64_t next_random(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static bool is_framer_error(const char *text)
{
	unsigned byte;
	char tail[16] = "";
	if (!strcmp(text, TOO_LONG) || !strcmp(text, TOO_DEEP))
		return true;
	return sscanf(text, "stray byte 0x%2x%15[^\n]", &byte, tail) >= 1 &&
	       (!tail[0] || !strcmp(tail, " in string"));
}

static void test_garbage(void)
{
	struct qmp_framer f;
	struct events ev = {0};
	qmp_framer_init(&f);

	/* One stray byte: one error, and the rest of its line is dropped. */
	feed_str(&f, "{\"a\": 1\x01 {\"execute\": \"stop\"}\n", &ev);
	CHECK(ev.n == 1);
	check_error(&ev, 0, "stray byte 0x01");
	clear(&ev);
	feed_str(&f, "\xc3\xa9 \"x\"\n", &ev);
	CHECK(ev.n == 1);
	check_error(&ev, 0, "stray byte 0xc3");
	clear(&ev);
	feed_str(&f, "{\"a\": \"tab\there\"}\n", &ev);
	CHECK(ev.n == 1);
	check_error(&ev, 0, "stray byte 0x09 in string");
	clear(&ev);
	/* A newline that is the stray byte ends its own skip. */
	feed_str(&f, "{\"a\": \"x\n{\"b\": 2}", &ev);
	CHECK(ev.n == 2);
	check_error(&ev, 0, "stray byte 0x0a in string");
	check_value(&ev, 1, "{\"b\": 2}", 8);
	clear(&ev);
	/* UTF-8 and DEL are fine inside strings. */
	feed_str(&f, "\"\xe2\x98\x83\x7f\"", &ev);
	CHECK(ev.n == 1);
	check_value(&ev, 0, "\"\xe2\x98\x83\x7f\"", 6);
	clear(&ev);

	/* Random bytes, then the resync: whatever came out is a value or one
	 * of the framer's errors, and a message after it is served. */
	uint64_t x = 20240611;
	for (int i = 0; i < 8; i++) {
		size_t n = 4096 * (size_t)(i + 1);
		char *junk = malloc(n);
		CHECK(junk);
		for (size_t k = 0; k < n; k++)
			junk[k] = (char)next_random(&x);
		feed(&f, junk, n, &ev);
		feed_str(&f, RESYNC, &ev);
		for (size_t k = 0; k < ev.n; k++)
			CHECK(!ev.e[k].error || is_framer_error(ev.e[k].text));
		check_in_step(&f, &ev, i);
		clear(&ev);
		free(junk);
	}

	/* Nearly JSON: random tokens. */
	static const char *const tokens[] = {
		"{", "}", "[", "]", ":", ",", "\"x\"", "1", "true", "null", " ",
		"\"execute\"", "\"query-status\"", "\"\\u12\"", "\\", "-", "e5",
	};
	for (int i = 0; i < 200; i++) {
		char line[60 * 16 + 4] = "";
		for (int k = 0; k < 60; k++) {
			size_t pick = next_random(&x) % (sizeof(tokens) / sizeof(tokens[0]));
			strcat(line, tokens[pick]);
		}
		strcat(line, RESYNC);
		feed_str(&f, line, &ev);
		for (size_t k = 0; k < ev.n; k++)
			CHECK(!ev.e[k].error || is_framer_error(ev.e[k].text));
		check_in_step(&f, &ev, i);
		clear(&ev);
	}
	free(ev.e);
	qmp_framer_release(&f);
}

int main(void)
{
	test_whole_values();
	test_split_at_every_byte();
	test_many_in_one_read();
	test_oversized();
	test_nesting();
	test_truncated();
	test_garbage();
	printf("qmp framer: ok\n");
	return 0;
}
