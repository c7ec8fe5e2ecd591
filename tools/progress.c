#include "progress.h"
#include "units.h"

#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* A log gets a line at most this often, however fast rounds go by. */
#define PLAIN_INTERVAL_MS 1000
#define BAR_WIDTH 20

/* The fields of a query-migrate reply that the text uses; has_* and
 * NULL strings mark what the reply did not carry. */
struct mig_info {
	const char *status;
	bool has_time, has_setup, has_downtime, has_expected, has_ram, has_received;
	uint64_t total_time, setup_time, downtime, expected_downtime;
	uint64_t transferred, remaining, total, duplicate, normal, normal_bytes;
	uint64_t dirty_pages_rate, dirty_sync_count, page_size, received;
	double mbps;
	int64_t throttle; /* -1: not reported */
	const char *blocked, *error;
};

static bool get_u64(json_t *obj, const char *key, uint64_t *out)
{
	json_t *v = json_object_get(obj, key);
	if (!json_is_number(v))
		return false;
	if (json_is_integer(v)) {
		json_int_t n = json_integer_value(v);
		*out = n > 0 ? (uint64_t)n : 0;
	} else {
		double d = json_number_value(v);
		*out = d > 0 ? d < 1.8e19 ? (uint64_t)d : UINT64_MAX : 0;
	}
	return true;
}

static void parse_info(json_t *info, struct mig_info *m)
{
	memset(m, 0, sizeof(*m));
	m->status = json_string_value(json_object_get(info, "status"));
	if (!m->status)
		m->status = "none";
	m->has_time = get_u64(info, "total-time", &m->total_time);
	m->has_setup = get_u64(info, "setup-time", &m->setup_time);
	m->has_downtime = get_u64(info, "downtime", &m->downtime);
	m->has_expected = get_u64(info, "expected-downtime", &m->expected_downtime);
	m->has_received = get_u64(info, "x-godwit-received", &m->received);
	uint64_t throttle;
	m->throttle = get_u64(info, "cpu-throttle-percentage", &throttle) ? (int64_t)throttle : -1;
	m->blocked = json_string_value(json_object_get(info, "x-godwit-blocked"));
	m->error = json_string_value(json_object_get(info, "error-desc"));

	json_t *ram = json_object_get(info, "ram");
	m->has_ram = json_is_object(ram);
	get_u64(ram, "transferred", &m->transferred);
	get_u64(ram, "remaining", &m->remaining);
	get_u64(ram, "total", &m->total);
	get_u64(ram, "duplicate", &m->duplicate);
	get_u64(ram, "normal", &m->normal);
	get_u64(ram, "normal-bytes", &m->normal_bytes);
	get_u64(ram, "dirty-pages-rate", &m->dirty_pages_rate);
	get_u64(ram, "dirty-sync-count", &m->dirty_sync_count);
	if (!get_u64(ram, "page-size", &m->page_size) || !m->page_size)
		m->page_size = 4096;
	m->mbps = json_number_value(json_object_get(ram, "mbps"));
}

bool migration_status_final(const char *status)
{
	return !strcmp(status, "completed") || !strcmp(status, "failed") ||
	       !strcmp(status, "cancelled");
}

/*
 * Share of guest RAM that is at the destination as it is now: what is not
 * dirty (virsh domjobinfo shows the same). It falls back while the guest
 * dirties faster than the link sends, which is the truth; sent bytes
 * against sent + remaining would sit at 99% instead.
 */
static unsigned percent(const struct mig_info *m)
{
	if (!strcmp(m->status, "completed"))
		return 100;
	/* Before the first sync of the dirty bitmap nothing is known clean. */
	if (!m->total || !m->dirty_sync_count || m->remaining >= m->total)
		return 0;
	return (unsigned)((double)(m->total - m->remaining) * 100 / (double)m->total);
}

/* A growing string that never overflows; what does not fit is cut. */
struct line {
	char text[1024];
	size_t len;
};

static void add(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(struct line *l, const char *fmt, ...)
{
	size_t room = sizeof(l->text) - l->len;
	if (room <= 1)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(l->text + l->len, room, fmt, ap);
	va_end(ap);
	if (n > 0)
		l->len += (size_t)n < room ? (size_t)n : room - 1;
}

/* The figures both forms of progress show, separated by sep. */
static void add_figures(struct line *l, const struct mig_info *m, const char *sep)
{
	char a[UNITS_BUF], b[UNITS_BUF];
	if (m->has_ram) {
		add(l, "%s%s sent%s%s left", sep, fmt_bytes(a, m->transferred), sep,
		    fmt_bytes(b, m->remaining));
		add(l, "%s%s%sdirtying %s", sep, fmt_rate(a, m->mbps * 1e6 / 8), sep,
		    fmt_rate(b, (double)m->dirty_pages_rate * (double)m->page_size));
	}
	if (m->has_received)
		add(l, "%sreceived %s", sep, fmt_bytes(a, m->received));
	if (m->has_expected)
		add(l, "%sexpected downtime %s", sep, fmt_duration(a, m->expected_downtime));
	if (m->throttle > 0)
		add(l, "%sthrottle %lld%%", sep, (long long)m->throttle);
}

void migration_print_line(FILE *f, json_t *info)
{
	struct mig_info m;
	char t[UNITS_BUF];
	struct line l = {.len = 0};
	parse_info(info, &m);
	if (m.has_time)
		add(&l, "[%s] ", fmt_duration(t, m.total_time));
	add(&l, "%s", m.status);
	if (m.has_ram)
		add(&l, ", round %llu: %u%%", (unsigned long long)m.dirty_sync_count, percent(&m));
	add_figures(&l, &m, ", ");
	if (m.blocked)
		add(&l, "; not switching over yet: %s", m.blocked);
	if (m.error)
		add(&l, "; error: %s", m.error);
	fprintf(f, "%s\n", l.text);
}

static unsigned terminal_width(void)
{
	struct winsize ws;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		return ws.ws_col;
	return 80;
}

/* One line that fits the terminal: a wrapped line could not be redrawn. */
static void draw(struct progress *p, const struct mig_info *m)
{
	struct line l = {.len = 0};
	unsigned pct = percent(m);
	unsigned fill = pct * BAR_WIDTH / 100;
	add(&l, "[");
	for (unsigned i = 0; i < BAR_WIDTH; i++)
		add(&l, "%c", i < fill ? '#' : '.');
	/* Status and round first: a narrow terminal cuts the end of the line. */
	add(&l, "] %3u%%  %s", pct, m->status);
	if (m->has_ram)
		add(&l, " round %llu", (unsigned long long)m->dirty_sync_count);
	add_figures(&l, m, "  ");
	if (m->blocked)
		add(&l, "  waiting: %s", m->blocked);
	size_t width = terminal_width() - 1;
	if (l.len > width)
		l.text[width] = '\0';
	printf("\r%s\033[K", l.text);
	fflush(stdout);
	p->drawn = true;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void progress_init(struct progress *p, bool tty)
{
	memset(p, 0, sizeof(*p));
	p->tty = tty;
	p->last_round = -1;
}

void progress_update(struct progress *p, json_t *info)
{
	struct mig_info m;
	parse_info(info, &m);
	if (p->tty) {
		draw(p, &m);
		return;
	}
	int64_t now = now_ms();
	bool changed = (int64_t)m.dirty_sync_count != p->last_round ||
		       strcmp(m.status, p->last_status) != 0;
	if (p->printed && !(changed && now - p->last_ms >= PLAIN_INTERVAL_MS))
		return;
	migration_print_line(stdout, info);
	fflush(stdout);
	p->printed = true;
	p->last_ms = now;
	p->last_round = (int64_t)m.dirty_sync_count;
	snprintf(p->last_status, sizeof(p->last_status), "%s", m.status);
}

void progress_end(struct progress *p)
{
	if (p->drawn)
		putchar('\n');
	p->drawn = false;
	fflush(stdout);
}

void migration_print_summary(FILE *f, json_t *info)
{
	struct mig_info m;
	char a[UNITS_BUF], b[UNITS_BUF];
	parse_info(info, &m);
	fprintf(f, "migration %s\n", m.status);
	if (m.has_time) {
		fprintf(f, "  total time    %s", fmt_duration(a, m.total_time));
		if (m.has_setup)
			fprintf(f, " (setup %s)", fmt_duration(b, m.setup_time));
		fputc('\n', f);
	}
	if (m.has_downtime)
		fprintf(f, "  downtime      %s\n", fmt_duration(a, m.downtime));
	if (m.has_ram) {
		fprintf(f, "  transferred   %s (%llu bytes)\n", fmt_bytes(a, m.transferred),
			(unsigned long long)m.transferred);
		fprintf(f, "  rounds        %llu\n", (unsigned long long)m.dirty_sync_count);
		if (m.total_time)
			fprintf(f, "  throughput    %s on average\n",
				fmt_rate(a, (double)m.transferred * 1000 / (double)m.total_time));
		fprintf(f, "  zero pages    %llu\n", (unsigned long long)m.duplicate);
		fprintf(f, "  normal pages  %llu (%s)\n", (unsigned long long)m.normal,
			fmt_bytes(a, m.normal_bytes));
	}
	if (m.has_received)
		fprintf(f, "  received      %s (%llu bytes)\n", fmt_bytes(a, m.received),
			(unsigned long long)m.received);
	if (m.error)
		fprintf(f, "  error         %s\n", m.error);
}
