/*
 * object-add's objects (objects.h): a short list by id, since a VMM
 * holds a handful (one set of credentials per direction, perhaps an
 * authz).
 */
#include "vmm/objects.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct object {
	struct object *next;
	char *id;
	struct gw_tls_creds *creds; /* tls-creds-x509, or NULL */
	char *identity;             /* authz-simple, or NULL */
};

struct vmm_objects {
	struct object *head;
};

struct vmm_objects *objects_new(void)
{
	return calloc(1, sizeof(struct vmm_objects));
}

static void object_free(struct object *obj)
{
	gw_tls_creds_free(obj->creds);
	free(obj->identity);
	free(obj->id);
	free(obj);
}

void objects_free(struct vmm_objects *o)
{
	if (!o)
		return;
	while (o->head) {
		struct object *next = o->head->next;
		object_free(o->head);
		o->head = next;
	}
	free(o);
}

static struct object *find(const struct vmm_objects *o, const char *id)
{
	struct object *obj = o->head;
	while (obj && strcmp(obj->id, id))
		obj = obj->next;
	return obj;
}

/* Link a new object: 0, or -EEXIST / -ENOMEM (obj is then freed). */
static int add(struct vmm_objects *o, struct object *obj, char *errmsg, size_t errlen)
{
	int ret = 0;
	if (!obj->id || (!obj->creds && !obj->identity))
		ret = -ENOMEM;
	else if (find(o, obj->id))
		ret = -EEXIST;
	if (ret) {
		/* QEMU's words for a taken id. */
		snprintf(errmsg, errlen,
			 ret == -EEXIST ?
				 "attempt to add duplicate property '%s' to object (type 'container')" :
				 "out of memory adding object '%s'",
			 obj->id ? obj->id : "");
		object_free(obj);
		return ret;
	}
	obj->next = o->head;
	o->head = obj;
	return 0;
}

int objects_add_tls_creds(struct vmm_objects *o, const char *id, struct gw_tls_creds *creds,
			  char *errmsg, size_t errlen)
{
	struct object *obj = calloc(1, sizeof(*obj));
	if (!obj) {
		gw_tls_creds_free(creds);
		snprintf(errmsg, errlen, "out of memory adding object '%s'", id);
		return -ENOMEM;
	}
	obj->id = strdup(id);
	obj->creds = creds;
	return add(o, obj, errmsg, errlen);
}

int objects_add_authz(struct vmm_objects *o, const char *id, const char *identity, char *errmsg,
		      size_t errlen)
{
	struct object *obj = calloc(1, sizeof(*obj));
	if (!obj) {
		snprintf(errmsg, errlen, "out of memory adding object '%s'", id);
		return -ENOMEM;
	}
	obj->id = strdup(id);
	obj->identity = strdup(identity);
	return add(o, obj, errmsg, errlen);
}

int objects_del(struct vmm_objects *o, const char *id, char *errmsg, size_t errlen)
{
	struct object **p = &o->head;
	while (*p && strcmp((*p)->id, id))
		p = &(*p)->next;
	if (!*p) {
		snprintf(errmsg, errlen, "object '%s' not found", id);
		return -ENOENT;
	}
	struct object *obj = *p;
	*p = obj->next;
	object_free(obj);
	return 0;
}

struct gw_tls_creds *objects_tls_creds(const struct vmm_objects *o, const char *id)
{
	struct object *obj = find(o, id);
	return obj ? obj->creds : NULL;
}

const char *objects_authz_identity(const struct vmm_objects *o, const char *id)
{
	struct object *obj = find(o, id);
	return obj ? obj->identity : NULL;
}
