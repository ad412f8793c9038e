#ifndef DQLITE_VFS_H
#define DQLITE_VFS_H
#include <stdint.h>

#define DQ_MAX_REGIONS 4096

typedef struct dq_vfs dq_vfs;

/* Test-only allocation fault switch (see vfs.c); zero means off. */
extern long long dq_test_fail_alloc_after;

typedef struct dq_frames {
	int page_size;
	int count;
	uint32_t db_size;
	const unsigned char *frames; /* count x (24-byte header + page) */
} dq_frames;

dq_vfs *dq_vfs_new(const char *name, unsigned long long seed, int make_default, uintptr_t go);
int dq_detach_store(dq_vfs *v, const char *name, uintptr_t *out);
void dq_vfs_destroy(dq_vfs *v);
void dq_vfs_set_time(dq_vfs *v, long long unix_ms);
int dq_pending(dq_vfs *v, const char *name);
int dq_page_size(dq_vfs *v, const char *name);
int dq_poll(dq_vfs *v, const char *name, dq_frames *out);
int dq_apply(dq_vfs *v, const char *name);
int dq_abort(dq_vfs *v, const char *name);
int dq_apply_frames(dq_vfs *v, const char *name, int page_size, int count, const uint32_t *pgnos,
                    const unsigned char *pages, uint32_t db_size);
unsigned char *dq_image(dq_vfs *v, const char *name, long long *size);
int dq_wal_size(dq_vfs *v, const char *name, long long *size);
int dq_wal_copy(dq_vfs *v, const char *name, unsigned char **out, long long *size);
int dq_wal_memory(dq_vfs *v, const char *name, long long *size);
long long dq_trim(dq_vfs *v, int idle_ticks);
int dq_image_bound(dq_vfs *v, const char *name, long long *size);
int dq_restore(dq_vfs *v, const char *name, const unsigned char *data, long long size);
int dq_clear(dq_vfs *v, const char *name);
typedef struct sqlite3_stmt sqlite3_stmt;
int dq_bind_text(sqlite3_stmt *s, int i, const char *p, int n);
typedef struct dq_guard_state dq_guard_state;
dq_guard_state *dq_guard(sqlite3 *db);
void dq_guard_trust(dq_guard_state *g, int trusted);
void dq_guard_free(dq_guard_state *g);
int dq_no_checkpoint_on_close(sqlite3 *db);
long long dq_cache_used(sqlite3 *db);
int dq_ckpt_error(sqlite3 *db);
int dq_bind_blob(sqlite3_stmt *s, int i, const void *p, int n);
#endif
