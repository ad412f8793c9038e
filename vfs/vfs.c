/* An in-memory SQLite VFS that holds write transactions back until they are
 * replicated. See doc.go for the design; the short version:
 *
 * - A database's WAL, rollback journal (used only when the journal mode
 *   changes) and shared-memory WAL index regions live in memory; its main
 *   file too, unless the VFS was made with a file opener: then it is a file
 *   reached through the Go callbacks of store.go.
 * - When a connection takes the WAL write lock, the VFS remembers the WAL
 *   size and copies the WAL index. When it releases the lock after writing a
 *   commit frame, the VFS captures the transaction's WAL bytes and the new
 *   index, then puts back the old ones: nobody sees the transaction, and the
 *   database is "pending" (no other write can start) until dq_apply makes it
 *   visible again (after Raft committed it) or dq_abort drops it.
 * - Followers append replicated frames to their WAL (dq_apply_frames) and
 *   invalidate the index header so the next reader rebuilds it.
 * - Any failure on the way (no memory for the WAL, the index, the copies)
 *   fails the transaction while SQLite can still roll it back: releasing
 *   the write lock, where the capture happens, cannot report an error, so
 *   the room for the capture is reserved when the commit frame is written.
 *   A transaction is never visible uncaptured, nor captured uncommitted.
 *
 * Everything runs on one thread at a time per VFS instance (the node's loop).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite3min.h"
#include "vfs.h"

#define WAL_HDR 32
#define FRAME_HDR 24
#define CKPT_INFO_START 96
#define CKPT_INFO_END 136
#define JULIAN_UNIX_EPOCH_MS 210866760000000LL
#define SQLITE_IOERR_WRITE (SQLITE_IOERR | (3 << 8))
#define SQLITE_IOERR_NOMEM (SQLITE_IOERR | (12 << 8))
#define SQLITE_IOERR_READ (SQLITE_IOERR | (1 << 8))

/* ---- database files through Go (store.go) ----
 *
 * A VFS made with a file opener keeps each database's main file in a File
 * of the node's data directory (an FS the simulator can fail), reached
 * through these callbacks: store is the Go handle of the open file. Only
 * the main file goes there; the WAL, the journal and the WAL index stay in
 * memory (the WAL is kept short by checkpoints). */
extern int dqStoreOpen(uintptr_t vfs, char *name, uintptr_t *out);
extern int dqStoreRead(uintptr_t f, void *p, int n, long long off);
extern int dqStoreWrite(uintptr_t f, void *p, int n, long long off);
extern int dqStoreTruncate(uintptr_t f, long long size);
extern int dqStoreSync(uintptr_t f);
extern int dqStoreSize(uintptr_t f, long long *out);

/* ---- allocation, with a test-only fault switch ---- */

/* dq_test_fail_alloc_after is a countdown for tests (set through
 * failAllocAfter in testhook.go): while it is positive, every allocation
 * below decrements it, and the one that brings it to zero fails as if the
 * heap were exhausted; the switch is then inert again. It is zero, and
 * costs one load per allocation, unless a test sets it. Every allocation
 * this file makes goes through these wrappers, so a test can fail each one
 * in turn. */
long long dq_test_fail_alloc_after;

static int alloc_fault(void) {
	if (dq_test_fail_alloc_after <= 0) return 0;
	return --dq_test_fail_alloc_after == 0;
}

/* invariant_failed stops the process on a broken invariant (our bug), with
 * the values involved: carrying on could replicate or expose the wrong
 * transaction. */
static void invariant_failed(const char *what, long long a, long long b) {
	fprintf(stderr, "dqlite vfs: broken invariant: %s (%lld, %lld)\n", what, a, b);
	abort();
}

static void *dq_malloc(size_t n) { return alloc_fault() ? NULL : malloc(n); }
static void *dq_calloc(size_t k, size_t n) { return alloc_fault() ? NULL : calloc(k, n); }
static void *dq_realloc(void *p, size_t n) { return alloc_fault() ? NULL : realloc(p, n); }
static char *dq_strdup(const char *s) { return alloc_fault() ? NULL : strdup(s); }

/* DQ_WAL_KEEP_BYTES is the room an emptied WAL keeps for good (a WAL
 * checkpointed at 1000 frames of 4 KiB stays within it). A database whose
 * main file is a File keeps more, and the room of its last capture, until
 * dq_trim finds it idle: a run of large transactions then reuses memory
 * already mapped instead of faulting in fresh pages for every one (tens of
 * milliseconds for a 10 MB transaction on a busy machine). */
#define DQ_WAL_KEEP_BYTES (4 << 20)

typedef struct buf {
	unsigned char *data;
	sqlite3_int64 size, cap;
	int exists;
} buf;

/* buf_reserve makes room for n bytes. Buffers shrink only in dq_trim, with
 * no transaction being written or pending, so rewriting bytes a buffer has
 * held since cannot fail (dq_apply relies on this). */
static int buf_reserve(buf *b, sqlite3_int64 n) {
	if (n <= b->cap) return SQLITE_OK;
	sqlite3_int64 cap = b->cap ? b->cap : 4096;
	while (cap < n) cap *= 2;
	unsigned char *d = dq_realloc(b->data, (size_t)cap);
	if (!d) return SQLITE_NOMEM;
	/* The new room is not cleared: bytes past size are never read
	 * (buf_write zeroes a gap it leaves), and room never touched stays
	 * out of the resident set. */
	b->data = d;
	b->cap = cap;
	return SQLITE_OK;
}

/* reserve makes *p a block of at least n bytes (not keeping its contents). */
static int reserve(unsigned char **p, sqlite3_int64 *cap, sqlite3_int64 n) {
	if (n <= *cap) return SQLITE_OK;
	unsigned char *q = dq_malloc((size_t)n);
	if (!q) return SQLITE_IOERR_NOMEM;
	free(*p);
	*p = q;
	*cap = n;
	return SQLITE_OK;
}

static int buf_write(buf *b, const void *p, int n, sqlite3_int64 off) {
	int rc = buf_reserve(b, off + n);
	if (rc) return rc;
	if (off > b->size) memset(b->data + b->size, 0, (size_t)(off - b->size));
	memcpy(b->data + off, p, (size_t)n);
	if (off + n > b->size) b->size = off + n;
	b->exists = 1;
	return SQLITE_OK;
}

typedef struct dq_db {
	char *name;
	buf main, wal, journal;
	void *regions[DQ_MAX_REGIONS];
	int nregions, region_size;
	/* Main file locks. */
	int shared, reserved, exclusive;
	/* WAL index locks: shared holders per slot, exclusive flag per slot. */
	int shm_shared[SQLITE_SHM_NLOCK];
	int shm_excl[SQLITE_SHM_NLOCK];
	/* Write transaction capture. */
	int writing;
	sqlite3_int64 pre_wal_size, commit_end;
	int below_start; /* a write was refused below pre_wal_size */
	int pre_valid;   /* the index was valid when the write lock was taken */
	unsigned char *pre_index;
	int pre_nregions;
	/* Room for the capture, reserved while a failure can still fail the
	 * commit (see reserve_capture): end_write, which runs after SQLite
	 * committed, must not allocate. */
	unsigned char *res_wal, *res_index;
	sqlite3_int64 res_wal_cap, res_index_cap;
	/* dq_trim calls since the last write or replicated frames. */
	int idle;
	/* A checkpoint's write to the main file failed after its last page
	 * (ckpt_err, until the checkpoint lets go of its lock), and what the
	 * backfill count was before it (see f_control). ckpt_report keeps
	 * the failure for dq_ckpt_error. */
	int ckpt_err, ckpt_report;
	uint32_t ckpt_backfill;
	/* Pending (captured, invisible) transaction. */
	int pending;
	unsigned char *captured; /* WAL bytes [pre_wal_size, commit_end) */
	sqlite3_int64 captured_size, captured_at, captured_cap;
	unsigned char *post_index;
	sqlite3_int64 post_index_cap;
	int post_nregions;
	unsigned int salt;
	/* The main file's Go handle (store.go); 0: the main file is the
	 * memory buffer main. */
	uintptr_t store;
	struct dq_db *next;
} dq_db;

typedef struct dq_vfs {
	sqlite3_vfs base;
	char *name;
	dq_db *dbs;
	sqlite3_vfs *os; /* for temporary files */
	sqlite3_int64 now_ms; /* unix milliseconds, set by the node */
	uint64_t rand_state;
	uintptr_t go; /* the Go VFS's handle when main files are Files, else 0 */
	/* A checkpoint's pages, coalesced into writes of up to DQ_CKPT_CHUNK
	 * bytes to c_db's main File (see f_control). */
	unsigned char *cbuf;
	struct dq_db *c_db;
	sqlite3_int64 c_off, c_len;
} dq_vfs;

enum { KIND_MAIN = 1, KIND_WAL, KIND_JOURNAL, KIND_TEMP };

typedef struct dq_file {
	sqlite3_file base;
	dq_vfs *vfs;
	dq_db *db;
	int kind;
	int lock;
	unsigned shm_shared_mask, shm_excl_mask;
	sqlite3_file *temp; /* KIND_TEMP: the OS file, stored after this struct */
} dq_file;

static dq_db *db_find(dq_vfs *v, const char *name, int create) {
	for (dq_db *d = v->dbs; d; d = d->next)
		if (strcmp(d->name, name) == 0) return d;
	if (!create) return NULL;
	dq_db *d = dq_calloc(1, sizeof *d);
	if (!d) return NULL;
	d->name = dq_strdup(name);
	if (!d->name) {
		free(d);
		return NULL;
	}
	d->next = v->dbs;
	v->dbs = d;
	return d;
}

/* db_open_store opens d's main file through the VFS's file opener, if it
 * has one and the file is not open yet. */
static int db_open_store(dq_vfs *v, dq_db *d) {
	if (!v->go || d->store) return SQLITE_OK;
	uintptr_t h = 0;
	if (dqStoreOpen(v->go, d->name, &h) != 0 || !h) return SQLITE_CANTOPEN;
	d->store = h;
	return SQLITE_OK;
}

/* main_read reads n bytes of d's main file at off (zeros past its end):
 * SQLITE_OK, SQLITE_IOERR_SHORT_READ or an error. */
static int main_read(dq_db *d, void *out, sqlite3_int64 n, sqlite3_int64 off) {
	if (d->store) {
		unsigned char *o = out;
		while (n > 0) {
			int k = n > (1 << 30) ? (1 << 30) : (int)n;
			int rc = dqStoreRead(d->store, o, k, off);
			if (rc) return rc;
			o += k;
			off += k;
			n -= k;
		}
		return SQLITE_OK;
	}
	if (off >= d->main.size) {
		memset(out, 0, (size_t)n);
		return n ? SQLITE_IOERR_SHORT_READ : SQLITE_OK;
	}
	sqlite3_int64 avail = d->main.size - off;
	if (avail < n) {
		memcpy(out, d->main.data + off, (size_t)avail);
		memset((char *)out + avail, 0, (size_t)(n - avail));
		return SQLITE_IOERR_SHORT_READ;
	}
	memcpy(out, d->main.data + off, (size_t)n);
	return SQLITE_OK;
}

static sqlite3_int64 main_size(dq_db *d) {
	if (!d->store) return d->main.size;
	long long n = 0;
	if (dqStoreSize(d->store, &n) != 0) return -1;
	return n;
}

/* index_size is the size of a copy of the index with nregions regions. */
static sqlite3_int64 index_size(dq_db *d, int nregions) { return (sqlite3_int64)nregions * d->region_size + 1; }

/* ---- byte order helpers ---- */

static uint32_t get_be32(const unsigned char *p) {
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static void put_be32(unsigned char *p, uint32_t v) {
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}
static uint32_t get_le32(const unsigned char *p) {
	return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

/* The WAL checksum: two running sums over 32-bit words, read little-endian
 * for magic 0x377f0682 and big-endian for 0x377f0683. */
static void wal_checksum(int big, const unsigned char *a, int n, uint32_t *s0, uint32_t *s1) {
	uint32_t x0 = *s0, x1 = *s1;
	for (int i = 0; i < n; i += 8) {
		uint32_t w0 = big ? get_be32(a + i) : get_le32(a + i);
		uint32_t w1 = big ? get_be32(a + i + 4) : get_le32(a + i + 4);
		x0 += w0 + x1;
		x1 += w1 + x0;
	}
	*s0 = x0;
	*s1 = x1;
}

/* ---- file methods ---- */

static int f_close(sqlite3_file *f) {
	dq_file *p = (dq_file *)f;
	if (p->kind == KIND_TEMP && p->temp && p->temp->pMethods) return p->temp->pMethods->xClose(p->temp);
	return SQLITE_OK;
}

static buf *file_buf(dq_file *p) {
	switch (p->kind) {
	case KIND_MAIN: return &p->db->main;
	case KIND_WAL: return &p->db->wal;
	default: return &p->db->journal;
	}
}

static int main_settle(dq_vfs *v, dq_db *d);

static int f_read(sqlite3_file *f, void *out, int n, sqlite3_int64 off) {
	dq_file *p = (dq_file *)f;
	if (p->kind == KIND_TEMP) return p->temp->pMethods->xRead(p->temp, out, n, off);
	if (p->kind == KIND_MAIN && p->db->store) {
		int rc = main_settle(p->vfs, p->db);
		return rc ? rc : dqStoreRead(p->db->store, out, n, off);
	}
	buf *b = file_buf(p);
	if (off >= b->size) {
		memset(out, 0, (size_t)n);
		return SQLITE_IOERR_SHORT_READ;
	}
	sqlite3_int64 avail = b->size - off;
	if (avail < n) {
		memcpy(out, b->data + off, (size_t)avail);
		memset((char *)out + avail, 0, (size_t)(n - avail));
		return SQLITE_IOERR_SHORT_READ;
	}
	memcpy(out, b->data + off, (size_t)n);
	return SQLITE_OK;
}

static int capture_write(dq_db *d, const unsigned char *in, int n, sqlite3_int64 off);

/* DQ_CKPT_CHUNK bounds one coalesced write of a checkpoint. A checkpoint
 * writes pages in page order, so a run of pages appended or rewritten
 * together goes to the file in a few large writes instead of a system
 * call (and a call into Go) per page. */
#define DQ_CKPT_CHUNK (1 << 20)

/* ckpt_flush writes the pages the checkpoint coalesced for d. */
static int ckpt_flush(dq_vfs *v, dq_db *d) {
	if (v->c_db != d || v->c_len == 0) return SQLITE_OK;
	sqlite3_int64 n = v->c_len;
	v->c_len = 0;
	return dqStoreWrite(d->store, v->cbuf, (int)n, v->c_off);
}

/* main_settle readies d's main File for an operation other than a
 * checkpoint's page write: the coalesced pages go first, and a failure to
 * write them at the checkpoint's end fails the operation (the truncate
 * that precedes a full checkpoint's backfill count). */
static int main_settle(dq_vfs *v, dq_db *d) {
	int rc = ckpt_flush(v, d);
	if (rc) return rc;
	return d->ckpt_err;
}

static int main_write(dq_vfs *v, dq_db *d, const void *in, int n, sqlite3_int64 off) {
	if (v->c_db != d) {
		int rc = main_settle(v, d);
		if (rc) return rc;
		return dqStoreWrite(d->store, (void *)in, n, off);
	}
	if (v->c_len > 0 && (off != v->c_off + v->c_len || v->c_len + n > DQ_CKPT_CHUNK)) {
		int rc = ckpt_flush(v, d);
		if (rc) return rc;
	}
	if (n > DQ_CKPT_CHUNK) return dqStoreWrite(d->store, (void *)in, n, off);
	if (v->c_len == 0) v->c_off = off;
	memcpy(v->cbuf + v->c_len, in, (size_t)n);
	v->c_len += n;
	return SQLITE_OK;
}

static int f_write(sqlite3_file *f, const void *in, int n, sqlite3_int64 off) {
	dq_file *p = (dq_file *)f;
	if (p->kind == KIND_TEMP) return p->temp->pMethods->xWrite(p->temp, in, n, off);
	if (p->kind == KIND_WAL && p->db->writing) {
		int rc = capture_write(p->db, in, n, off);
		if (rc) return rc;
	}
	if (p->kind == KIND_MAIN && p->db->store) return main_write(p->vfs, p->db, in, n, off);
	/* A failure here fails the write; SQLite then rolls the transaction
	 * back (it has not committed: the index header is updated after the
	 * last frame is written), and end_write sees no commit. */
	int rc = buf_write(file_buf(p), in, n, off);
	return rc == SQLITE_NOMEM ? SQLITE_IOERR_NOMEM : rc;
}

static int f_truncate(sqlite3_file *f, sqlite3_int64 size) {
	dq_file *p = (dq_file *)f;
	if (p->kind == KIND_TEMP) return p->temp->pMethods->xTruncate(p->temp, size);
	if (p->kind == KIND_MAIN && p->db->store) {
		int rc = main_settle(p->vfs, p->db);
		return rc ? rc : dqStoreTruncate(p->db->store, size);
	}
	buf *b = file_buf(p);
	if (size < b->size) b->size = size;
	/* An emptied WAL (a TRUNCATE checkpoint, which holds the write lock)
	 * gives its memory back: one large transaction would otherwise leave
	 * its frames' room allocated for good. Truncating drops the bytes
	 * anyway; only a captured transaction waiting to be applied needs the
	 * room its bytes had (dq_apply rewrites them where they were). A
	 * database with a main File keeps the room until dq_trim finds it
	 * idle. */
	if (size == 0 && p->kind == KIND_WAL && !p->db->pending && !p->db->store && b->cap > DQ_WAL_KEEP_BYTES) {
		free(b->data);
		b->data = NULL;
		b->cap = 0;
	}
	return SQLITE_OK;
}

static int f_sync(sqlite3_file *f, int flags) {
	dq_file *p = (dq_file *)f;
	if (p->kind == KIND_TEMP) return p->temp->pMethods->xSync(p->temp, flags);
	if (p->kind == KIND_MAIN && p->db->store) {
		int rc = main_settle(p->vfs, p->db);
		return rc ? rc : dqStoreSync(p->db->store);
	}
	return SQLITE_OK; /* durability comes from the Raft log */
}

static int f_size(sqlite3_file *f, sqlite3_int64 *out) {
	dq_file *p = (dq_file *)f;
	if (p->kind == KIND_TEMP) return p->temp->pMethods->xFileSize(p->temp, out);
	if (p->kind == KIND_MAIN && p->db->store) {
		int rc = main_settle(p->vfs, p->db);
		return rc ? rc : dqStoreSize(p->db->store, out);
	}
	*out = file_buf(p)->size;
	return SQLITE_OK;
}

static int f_lock(sqlite3_file *f, int level) {
	dq_file *p = (dq_file *)f;
	if (p->kind != KIND_MAIN) return SQLITE_OK;
	dq_db *d = p->db;
	if (level <= p->lock) return SQLITE_OK;
	if (level == SQLITE_LOCK_SHARED) {
		if (d->exclusive) return SQLITE_BUSY;
		d->shared++;
	} else if (level == SQLITE_LOCK_RESERVED) {
		if (d->reserved) return SQLITE_BUSY;
		d->reserved = 1;
	} else if (level >= SQLITE_LOCK_PENDING) {
		if (d->shared > 1 || d->exclusive) return SQLITE_BUSY;
		if (p->lock < SQLITE_LOCK_RESERVED) {
			if (d->reserved) return SQLITE_BUSY;
			d->reserved = 1;
		}
		if (level == SQLITE_LOCK_EXCLUSIVE) d->exclusive = 1;
	}
	p->lock = level;
	return SQLITE_OK;
}

static int f_unlock(sqlite3_file *f, int level) {
	dq_file *p = (dq_file *)f;
	if (p->kind != KIND_MAIN) return SQLITE_OK;
	dq_db *d = p->db;
	if (level >= p->lock) return SQLITE_OK;
	if (p->lock >= SQLITE_LOCK_EXCLUSIVE) d->exclusive = 0;
	if (p->lock >= SQLITE_LOCK_RESERVED && level < SQLITE_LOCK_RESERVED) d->reserved = 0;
	if (p->lock >= SQLITE_LOCK_SHARED && level < SQLITE_LOCK_SHARED) d->shared--;
	p->lock = level;
	return SQLITE_OK;
}

static int f_check_reserved(sqlite3_file *f, int *out) {
	dq_file *p = (dq_file *)f;
	*out = p->kind == KIND_MAIN && p->db->reserved;
	return SQLITE_OK;
}

/* DQ_FCNTL_CKPT_ERROR takes the failure of a checkpoint's last write (see
 * dq_ckpt_error). */
#define DQ_FCNTL_CKPT_ERROR 0x44510001

/* f_control brackets a checkpoint's page writes to a main File (SQLite
 * sends CKPT_START before the first and CKPT_DONE after the last): they are
 * coalesced in between. The pages still coalesced at CKPT_DONE are written
 * then; SQLite ignores what CKPT_DONE returns, so a failure is kept in
 * ckpt_err: the truncate that comes before a full checkpoint records its
 * backfill count fails with it (nothing is recorded), and when the
 * checkpoint lets go of its lock (f_shm_lock) the backfill count it may
 * have recorded (a partial checkpoint truncates nothing) is put back:
 * readers then take those frames from the WAL, as after any failed
 * checkpoint. */
static int f_control(sqlite3_file *f, int op, void *arg) {
	dq_file *p = (dq_file *)f;
	if (p->kind == KIND_TEMP) return p->temp->pMethods->xFileControl(p->temp, op, arg);
	if (p->kind != KIND_MAIN) return SQLITE_NOTFOUND;
	dq_vfs *v = p->vfs;
	dq_db *d = p->db;
	switch (op) {
	case SQLITE_FCNTL_CKPT_START:
		if (!d->store) return SQLITE_NOTFOUND;
		if (main_settle(v, d) == SQLITE_OK && !v->c_db) {
			if (!v->cbuf) v->cbuf = dq_malloc(DQ_CKPT_CHUNK); /* none: page by page */
			if (v->cbuf) v->c_db = d;
			v->c_len = 0;
		}
		if (d->nregions > 0) memcpy(&d->ckpt_backfill, (unsigned char *)d->regions[0] + CKPT_INFO_START, 4);
		return SQLITE_OK;
	case SQLITE_FCNTL_CKPT_DONE:
		if (v->c_db == d) {
			int rc = ckpt_flush(v, d);
			v->c_db = NULL;
			if (rc && !d->ckpt_err) d->ckpt_err = rc;
		}
		return d->store ? SQLITE_OK : SQLITE_NOTFOUND;
	case DQ_FCNTL_CKPT_ERROR:
		*(int *)arg = d->ckpt_report;
		d->ckpt_report = 0;
		return SQLITE_OK;
	}
	return SQLITE_NOTFOUND;
}

static int f_sector(sqlite3_file *f) {
	(void)f;
	return 512;
}

static int f_device(sqlite3_file *f) {
	(void)f;
	return SQLITE_IOCAP_SAFE_APPEND | SQLITE_IOCAP_POWERSAFE_OVERWRITE;
}

static int f_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out) {
	dq_db *d = ((dq_file *)f)->db;
	*out = NULL;
	if (region >= DQ_MAX_REGIONS) return SQLITE_IOERR;
	if (d->region_size && d->region_size != size) return SQLITE_IOERR;
	d->region_size = size;
	while (d->nregions <= region) {
		if (!extend) return SQLITE_OK;
		/* A region mapped after the commit frame was written (to index
		 * the transaction's last frames) must fit in the capture's copy
		 * of the index. Failing here fails the commit: SQLite updates
		 * the index header only once every frame is indexed. */
		if (d->writing && d->commit_end) {
			int rc = reserve(&d->res_index, &d->res_index_cap, index_size(d, d->nregions + 1));
			if (rc) return rc;
		}
		void *r = dq_calloc(1, (size_t)size);
		if (!r) return SQLITE_IOERR_NOMEM;
		d->regions[d->nregions++] = r;
	}
	*out = d->regions[region];
	return SQLITE_OK;
}

static void index_copy_to(dq_db *d, unsigned char *c) {
	for (int i = 0; i < d->nregions; i++)
		memcpy(c + (size_t)i * (size_t)d->region_size, d->regions[i], (size_t)d->region_size);
}

static unsigned char *index_copy(dq_db *d) {
	unsigned char *c = dq_malloc((size_t)index_size(d, d->nregions));
	if (c) index_copy_to(d, c);
	return c;
}

/* index_restore puts back an index copy, keeping the live checkpoint
 * information (backfill count and read marks) and zeroing regions mapped
 * since the copy. */
static void index_restore(dq_db *d, const unsigned char *c, int n) {
	unsigned char ckpt[CKPT_INFO_END - CKPT_INFO_START];
	if (d->nregions > 0) memcpy(ckpt, (unsigned char *)d->regions[0] + CKPT_INFO_START, sizeof ckpt);
	for (int i = 0; i < d->nregions; i++) {
		if (i < n)
			memcpy(d->regions[i], c + (size_t)i * (size_t)d->region_size, (size_t)d->region_size);
		else
			memset(d->regions[i], 0, (size_t)d->region_size);
	}
	if (d->nregions > 0) memcpy((unsigned char *)d->regions[0] + CKPT_INFO_START, ckpt, sizeof ckpt);
}

/* index_valid reports whether the index header is initialized (not
 * invalidated by dq_apply_frames or dq_restore). */
static int index_valid(dq_db *d) { return d->nregions > 0 && ((unsigned char *)d->regions[0])[12] != 0; }

/* wal_end is where the WAL's committed frames end, from the index
 * header's frame count (mxFrame): bytes past it are the leftovers of a
 * rolled back transaction that had spilled frames, which SQLite overwrites. */
static sqlite3_int64 wal_end(dq_db *d) {
	uint32_t mx = 0;
	/* An index invalidated by dq_apply_frames (isInit 0) has a stale frame
	 * count: the WAL's end is then unknown until a recovery rebuilds it. */
	if (d->nregions > 0 && ((unsigned char *)d->regions[0])[12] == 0) return d->wal.size;
	if (d->nregions > 0) memcpy(&mx, (unsigned char *)d->regions[0] + 16, sizeof mx);
	if (mx == 0 || d->wal.size < WAL_HDR) return d->wal.size < WAL_HDR ? d->wal.size : WAL_HDR;
	uint32_t pgsz = get_be32(d->wal.data + 8);
	if (pgsz == 1) pgsz = 65536;
	sqlite3_int64 end = WAL_HDR + (sqlite3_int64)mx * (FRAME_HDR + pgsz);
	return end < d->wal.size ? end : d->wal.size;
}

/* begin_write runs when a connection asks for the write lock, before it
 * is granted: if the index cannot be copied, the lock is refused (SQLite
 * returns the error), so no write starts without what hides it. */
static int begin_write(dq_db *d) {
	unsigned char *c = index_copy(d);
	if (!c) return SQLITE_IOERR_NOMEM;
	free(d->pre_index);
	d->pre_index = c;
	d->pre_nregions = d->nregions;
	d->writing = 1;
	d->idle = 0;
	d->pre_valid = index_valid(d);
	d->pre_wal_size = wal_end(d);
	d->commit_end = 0;
	d->below_start = 0;
	return SQLITE_OK;
}

/* reserve_capture makes room to capture a transaction whose commit frame
 * ends at commit_end: its WAL bytes and a copy of the index as it stands
 * (f_shm_map grows the copy for regions mapped later). It runs when the
 * commit frame is written, the last point where a failure still fails the
 * commit: after it SQLite only indexes the frames (through f_shm_map) and
 * releases the write lock, ignoring what that returns. */
static int reserve_capture(dq_db *d, sqlite3_int64 commit_end) {
	int rc = reserve(&d->res_wal, &d->res_wal_cap, commit_end - d->pre_wal_size);
	if (rc == SQLITE_OK) rc = reserve(&d->res_index, &d->res_index_cap, index_size(d, d->nregions));
	return rc;
}

/* release_capture_reserve gives the capture's room back, or, for a
 * database with a main File, keeps it for the next write (dq_trim gives it
 * back once the database is idle). */
static void release_capture_reserve(dq_db *d) {
	if (d->store) return;
	free(d->res_wal);
	free(d->res_index);
	d->res_wal = d->res_index = NULL;
	d->res_wal_cap = d->res_index_cap = 0;
}

/* capture_write runs before each write to the WAL under the write lock:
 * it notes where the transaction starts and where its commit frame ends,
 * and reserves the capture. An error fails the write, and with it the
 * transaction, which has not committed yet. */
static int capture_write(dq_db *d, const unsigned char *in, int n, sqlite3_int64 off) {
	/* A new WAL header: SQLite restarts the WAL (every frame was
	 * checkpointed and no reader uses them), so the transaction is
	 * everything from offset 0 on. */
	if (off == 0 && n == WAL_HDR && d->pre_wal_size > 0) {
		/* SQLite already wrote the restarted index header (no frames,
		 * new salts, nothing backfilled): hiding the transaction must go
		 * back to that state, not to the frames the restart discarded.
		 * Without the copy the write fails, and the restart stands with
		 * no frames: end_write cuts the WAL to its header. */
		unsigned char *c = index_copy(d);
		if (!c) return SQLITE_IOERR_NOMEM;
		free(d->pre_index);
		d->pre_index = c;
		d->pre_nregions = d->nregions;
		d->pre_wal_size = 0;
	}
	if (off < d->pre_wal_size) {
		/* It would overwrite committed frames that the capture cannot
		 * restore: fail the transaction instead of committing it here
		 * without replicating it. */
		d->below_start = 1;
		return SQLITE_IOERR_WRITE;
	}
	/* A frame header whose "database size" is set ends a commit. */
	if (n == FRAME_HDR && off >= WAL_HDR && get_be32(in + 4) != 0) {
		uint32_t pgsz = 0;
		if (d->wal.size >= WAL_HDR) pgsz = get_be32(d->wal.data + 8);
		if (pgsz == 1) pgsz = 65536;
		sqlite3_int64 end = off + FRAME_HDR + pgsz;
		int rc = reserve_capture(d, end);
		if (rc) return rc;
		d->commit_end = end;
	}
	return SQLITE_OK;
}

/* commit_landed reports whether SQLite committed the transaction whose
 * commit frame capture_write saw: the index header then counts frames up
 * to exactly that frame. A commit that failed after its commit frame was
 * written (its frames could not be indexed) left the header as it was, and
 * SQLite rolled it back. */
static int commit_landed(dq_db *d) {
	return d->commit_end > d->pre_wal_size && !d->below_start && index_valid(d) && wal_end(d) == d->commit_end;
}

/* end_write runs when the writer releases the write lock. It cannot fail:
 * SQLite ignores what releasing a lock returns, and a commit is done by
 * then. So it does not allocate: a committed transaction is captured into
 * the room reserve_capture made, and hidden again. */
static void end_write(dq_db *d) {
	d->writing = 0;
	if (commit_landed(d)) {
		sqlite3_int64 n = d->commit_end - d->pre_wal_size;
		if (!d->pre_index) invariant_failed("no index copy to hide the commit", d->pre_wal_size, n);
		if (n > d->res_wal_cap) invariant_failed("capture larger than its reserve", n, d->res_wal_cap);
		if (index_size(d, d->nregions) > d->res_index_cap)
			invariant_failed("index larger than its reserve", index_size(d, d->nregions), d->res_index_cap);
		memcpy(d->res_wal, d->wal.data + d->pre_wal_size, (size_t)n);
		index_copy_to(d, d->res_index);
		d->captured = d->res_wal;
		d->post_index = d->res_index;
		d->captured_cap = d->res_wal_cap;
		d->post_index_cap = d->res_index_cap;
		d->res_wal = d->res_index = NULL;
		d->res_wal_cap = d->res_index_cap = 0;
		d->captured_size = n;
		d->captured_at = d->pre_wal_size;
		d->post_nregions = d->nregions;
		d->wal.size = d->pre_wal_size;
		index_restore(d, d->pre_index, d->pre_nregions);
		d->pending = 1;
	} else {
		/* No commit (a rollback, a failed commit, a recovery, a
		 * checkpoint): drop frames past the committed ones, so frames
		 * appended later (replicated ones, on a follower) never follow
		 * them: a recovery would read a failed commit's frames, a whole
		 * checksummed transaction, as committed. */
		sqlite3_int64 end = wal_end(d);
		if (end < d->wal.size) d->wal.size = end;
		/* Nothing past the start of the write may have become visible
		 * uncaptured (after a restart the header alone remains). With
		 * no valid index at the start, the lock was taken to recover
		 * the index from the WAL (no transaction can start without a
		 * valid index), which makes frames already there visible. */
		sqlite3_int64 start = d->pre_wal_size > WAL_HDR ? d->pre_wal_size : WAL_HDR;
		if (d->pre_valid && index_valid(d) && end > start) invariant_failed("commit not captured", end, start);
	}
	release_capture_reserve(d);
	free(d->pre_index);
	d->pre_index = NULL;
}

static int f_shm_lock(sqlite3_file *f, int ofst, int n, int flags) {
	dq_file *p = (dq_file *)f;
	dq_db *d = p->db;
	unsigned mask = ((1u << n) - 1u) << ofst;
	if (flags & SQLITE_SHM_UNLOCK) {
		if ((flags & SQLITE_SHM_EXCLUSIVE) && ofst == 0 && (p->shm_excl_mask & 1u) && d->writing) end_write(d);
		/* The checkpoint lets go of read slot 0: see f_control. */
		if (d->ckpt_err && ofst <= 3 && 3 < ofst + n && (p->shm_excl_mask & (1u << 3))) {
			if (d->nregions > 0) memcpy((unsigned char *)d->regions[0] + CKPT_INFO_START, &d->ckpt_backfill, 4);
			d->ckpt_report = d->ckpt_err;
			d->ckpt_err = 0;
		}
		for (int i = ofst; i < ofst + n; i++) {
			if (p->shm_excl_mask & (1u << i)) d->shm_excl[i] = 0;
			if (p->shm_shared_mask & (1u << i)) d->shm_shared[i]--;
		}
		p->shm_excl_mask &= ~mask;
		p->shm_shared_mask &= ~mask;
		return SQLITE_OK;
	}
	if (flags & SQLITE_SHM_SHARED) {
		for (int i = ofst; i < ofst + n; i++)
			if (d->shm_excl[i] && !(p->shm_excl_mask & (1u << i))) return SQLITE_BUSY;
		for (int i = ofst; i < ofst + n; i++)
			if (!(p->shm_shared_mask & (1u << i))) d->shm_shared[i]++;
		p->shm_shared_mask |= mask;
		return SQLITE_OK;
	}
	/* Exclusive. A pending transaction holds the write slot. */
	if (ofst == 0 && d->pending) return SQLITE_BUSY;
	for (int i = ofst; i < ofst + n; i++) {
		int others = d->shm_shared[i] - ((p->shm_shared_mask >> i) & 1u);
		if (others > 0 || (d->shm_excl[i] && !(p->shm_excl_mask & (1u << i)))) return SQLITE_BUSY;
	}
	if (ofst == 0) {
		int rc = begin_write(d);
		if (rc) return rc;
	}
	for (int i = ofst; i < ofst + n; i++) d->shm_excl[i] = 1;
	p->shm_excl_mask |= mask;
	return SQLITE_OK;
}

static void f_shm_barrier(sqlite3_file *f) {
	(void)f;
	__sync_synchronize();
}

static int f_shm_unmap(sqlite3_file *f, int del) {
	(void)f;
	(void)del;
	return SQLITE_OK; /* regions live as long as the VFS */
}

static const sqlite3_io_methods io_methods = {
    2, f_close, f_read, f_write, f_truncate, f_sync, f_size, f_lock, f_unlock, f_check_reserved,
    f_control, f_sector, f_device, f_shm_map, f_shm_lock, f_shm_barrier, f_shm_unmap, NULL, NULL,
};

/* ---- VFS methods ---- */

static int v_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *out, int flags, int *oflags) {
	dq_vfs *v = (dq_vfs *)vfs;
	dq_file *p = (dq_file *)out;
	memset(p, 0, sizeof *p);
	p->vfs = v;
	if (!name || !(flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | 0x00000800))) {
		/* Temporary files and statement journals go to the OS VFS. */
		p->kind = KIND_TEMP;
		p->temp = (sqlite3_file *)(p + 1);
		int rc = v->os->xOpen(v->os, name, p->temp, flags, oflags);
		if (rc != SQLITE_OK) return rc;
		p->base.pMethods = &io_methods;
		return SQLITE_OK;
	}
	char dbname[512];
	size_t len = strlen(name);
	if (len >= sizeof dbname) return SQLITE_CANTOPEN;
	memcpy(dbname, name, len + 1);
	if (flags & SQLITE_OPEN_WAL) {
		p->kind = KIND_WAL;
		if (len > 4) dbname[len - 4] = 0; /* strip "-wal" */
	} else if (flags & SQLITE_OPEN_MAIN_DB) {
		p->kind = KIND_MAIN;
	} else {
		p->kind = KIND_JOURNAL;
		if (len > 8) dbname[len - 8] = 0; /* strip "-journal" */
	}
	p->db = db_find(v, dbname, flags & SQLITE_OPEN_CREATE);
	if (!p->db) return SQLITE_CANTOPEN;
	int rc = db_open_store(v, p->db);
	if (rc) return rc;
	file_buf(p)->exists = 1;
	if (oflags) *oflags = flags;
	p->base.pMethods = &io_methods;
	return SQLITE_OK;
}

/* split_name maps a file name to its database name and kind: "x-wal" is
 * the WAL of "x", "x-journal" its journal. Returns 0 if the name is too long. */
static int split_name(const char *name, char *dbname, size_t cap, int *kind) {
	size_t len = strlen(name);
	if (len >= cap) return 0;
	memcpy(dbname, name, len + 1);
	*kind = KIND_MAIN;
	if (len > 4 && strcmp(name + len - 4, "-wal") == 0) {
		dbname[len - 4] = 0;
		*kind = KIND_WAL;
	} else if (len > 8 && strcmp(name + len - 8, "-journal") == 0) {
		dbname[len - 8] = 0;
		*kind = KIND_JOURNAL;
	}
	return 1;
}

static buf *kind_buf(dq_db *d, int kind) {
	return kind == KIND_WAL ? &d->wal : kind == KIND_JOURNAL ? &d->journal : &d->main;
}

static int v_delete(sqlite3_vfs *vfs, const char *name, int sync) {
	dq_vfs *v = (dq_vfs *)vfs;
	char dbname[512];
	int kind;
	if (!split_name(name, dbname, sizeof dbname, &kind)) return SQLITE_IOERR_DELETE_NOENT;
	dq_db *d = db_find(v, dbname, 0);
	if (!d) return v->os->xDelete(v->os, name, sync);
	buf *b = kind_buf(d, kind);
	b->size = 0;
	b->exists = 0;
	return SQLITE_OK;
}

static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
	dq_vfs *v = (dq_vfs *)vfs;
	(void)flags;
	*out = 0;
	char dbname[512];
	int kind;
	if (!split_name(name, dbname, sizeof dbname, &kind)) return SQLITE_OK;
	dq_db *d = db_find(v, dbname, 0);
	if (!d) return SQLITE_OK;
	buf *b = kind_buf(d, kind);
	*out = b->exists && (kind == KIND_MAIN || b->size > 0);
	return SQLITE_OK;
}

static int v_fullpath(sqlite3_vfs *vfs, const char *name, int n, char *out) {
	(void)vfs;
	size_t len = strlen(name);
	if ((int)len >= n) return SQLITE_CANTOPEN;
	memcpy(out, name, len + 1);
	return SQLITE_OK;
}

static int v_randomness(sqlite3_vfs *vfs, int n, char *out) {
	dq_vfs *v = (dq_vfs *)vfs;
	for (int i = 0; i < n; i++) {
		/* splitmix64 */
		uint64_t z = (v->rand_state += 0x9e3779b97f4a7c15ULL);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
		out[i] = (char)(z ^ (z >> 31));
	}
	return n;
}

static int v_sleep(sqlite3_vfs *vfs, int us) {
	(void)vfs;
	return us; /* never sleep: the loop must not block; BUSY is returned instead */
}

static int v_time64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
	*out = ((dq_vfs *)vfs)->now_ms + JULIAN_UNIX_EPOCH_MS;
	return SQLITE_OK;
}

static int v_time(sqlite3_vfs *vfs, double *out) {
	sqlite3_int64 t;
	v_time64(vfs, &t);
	*out = (double)t / 86400000.0;
	return SQLITE_OK;
}

static int v_last_error(sqlite3_vfs *vfs, int n, char *out) {
	(void)vfs;
	if (n > 0) out[0] = 0;
	return 0;
}

/* ---- API used from Go ---- */

dq_vfs *dq_vfs_new(const char *name, unsigned long long seed, int make_default, uintptr_t go) {
	sqlite3_vfs *os = sqlite3_vfs_find(NULL);
	if (!os) return NULL;
	dq_vfs *v = dq_calloc(1, sizeof *v);
	if (!v) return NULL;
	v->name = dq_strdup(name);
	if (!v->name) {
		free(v);
		return NULL;
	}
	v->os = os;
	v->go = go;
	v->rand_state = seed;
	v->base.iVersion = 2;
	v->base.szOsFile = (int)sizeof(dq_file) + os->szOsFile;
	v->base.mxPathname = 511;
	v->base.zName = v->name;
	v->base.xOpen = v_open;
	v->base.xDelete = v_delete;
	v->base.xAccess = v_access;
	v->base.xFullPathname = v_fullpath;
	v->base.xRandomness = v_randomness;
	v->base.xSleep = v_sleep;
	v->base.xCurrentTime = v_time;
	v->base.xGetLastError = v_last_error;
	v->base.xCurrentTimeInt64 = v_time64;
	if (sqlite3_vfs_register(&v->base, make_default) != SQLITE_OK) {
		free(v->name);
		free(v);
		return NULL;
	}
	return v;
}

void dq_vfs_set_time(dq_vfs *v, long long unix_ms) { v->now_ms = unix_ms; }

static void db_free(dq_db *d) {
	free(d->main.data);
	free(d->wal.data);
	free(d->journal.data);
	for (int i = 0; i < d->nregions; i++) free(d->regions[i]);
	free(d->pre_index);
	free(d->captured);
	free(d->post_index);
	free(d->res_wal);
	free(d->res_index);
	free(d->name);
	free(d);
}

void dq_vfs_destroy(dq_vfs *v) {
	sqlite3_vfs_unregister(&v->base);
	while (v->dbs) {
		dq_db *d = v->dbs;
		v->dbs = d->next;
		db_free(d);
	}
	free(v->cbuf);
	free(v->name);
	free(v);
}

int dq_pending(dq_vfs *v, const char *name) {
	dq_db *d = db_find(v, name, 0);
	return d && d->pending;
}

int dq_page_size(dq_vfs *v, const char *name) {
	dq_db *d = db_find(v, name, 0);
	unsigned char h[2];
	if (!d || main_size(d) < 100 || main_read(d, h, 2, 16) != SQLITE_OK) return 0;
	int ps = (h[0] << 8) | h[1];
	return ps == 1 ? 65536 : ps;
}

/* dq_poll returns the pending transaction's frames: the caller gets the
 * page size, the frame count, the database size after commit, and pointers
 * into the captured bytes (valid until dq_apply or dq_abort). */
int dq_poll(dq_vfs *v, const char *name, dq_frames *out) {
	dq_db *d = db_find(v, name, 0);
	memset(out, 0, sizeof *out);
	if (!d || !d->pending) return SQLITE_NOTFOUND;
	const unsigned char *c = d->captured;
	sqlite3_int64 n = d->captured_size;
	if (d->captured_at == 0) {
		c += WAL_HDR;
		n -= WAL_HDR;
	}
	const unsigned char *hdr = d->captured_at == 0 ? d->captured : d->wal.data;
	uint32_t pgsz = get_be32(hdr + 8);
	if (pgsz == 1) pgsz = 65536;
	sqlite3_int64 fsz = FRAME_HDR + pgsz;
	if (pgsz < 512 || n <= 0 || n % fsz != 0) return SQLITE_ERROR;
	out->page_size = (int)pgsz;
	out->count = (int)(n / fsz);
	out->frames = c;
	out->db_size = get_be32(c + (out->count - 1) * fsz + 4);
	return SQLITE_OK;
}

/* keep_block makes *block (of *cap bytes) the room p (of pcap bytes), or
 * frees p when *block is already the larger. */
static void keep_block(unsigned char **block, sqlite3_int64 *cap, unsigned char *p, sqlite3_int64 pcap) {
	if (*cap >= pcap) {
		free(p);
		return;
	}
	free(*block);
	*block = p;
	*cap = pcap;
}

/* drop_captured ends the pending transaction (applied or aborted): its
 * capture's room becomes the next capture's reserve (see
 * release_capture_reserve) or is freed. */
static void drop_captured(dq_db *d) {
	if (d->store) {
		keep_block(&d->res_wal, &d->res_wal_cap, d->captured, d->captured_cap);
		keep_block(&d->res_index, &d->res_index_cap, d->post_index, d->post_index_cap);
	} else {
		free(d->captured);
		free(d->post_index);
	}
	d->captured = d->post_index = NULL;
	d->captured_cap = d->post_index_cap = 0;
	d->pending = 0;
	d->idle = 0;
}

/* dq_trim gives back, for each database with a main File that has been
 * idle (no write, no replicated frames) for idle_ticks calls, the capture
 * reserve it kept and the WAL room past DQ_WAL_KEEP_BYTES it no longer
 * uses. The node calls it once a tick. It returns the bytes freed. */
long long dq_trim(dq_vfs *v, int idle_ticks) {
	long long freed = 0;
	for (dq_db *d = v->dbs; d; d = d->next) {
		if (!d->store) continue;
		if (d->writing || d->pending) {
			d->idle = 0;
			continue;
		}
		if (++d->idle < idle_ticks) continue;
		freed += d->res_wal_cap + d->res_index_cap;
		free(d->res_wal);
		free(d->res_index);
		d->res_wal = d->res_index = NULL;
		d->res_wal_cap = d->res_index_cap = 0;
		buf *b = &d->wal;
		if (b->cap <= DQ_WAL_KEEP_BYTES) continue;
		if (b->size == 0) {
			freed += b->cap;
			free(b->data);
			b->data = NULL;
			b->cap = 0;
			continue;
		}
		sqlite3_int64 keep = (b->size + 4095) / 4096 * 4096;
		if (keep < DQ_WAL_KEEP_BYTES) keep = DQ_WAL_KEEP_BYTES;
		if (keep * 2 > b->cap) continue; /* not worth a copy */
		unsigned char *p = dq_realloc(b->data, (size_t)keep);
		if (!p) continue; /* keeps the larger block */
		freed += b->cap - keep;
		b->data = p;
		b->cap = keep;
	}
	return freed;
}

/* dq_apply makes the pending transaction visible. */
int dq_apply(dq_vfs *v, const char *name) {
	dq_db *d = db_find(v, name, 0);
	if (!d || !d->pending) return SQLITE_NOTFOUND;
	/* This cannot fail: the WAL buffer held these bytes when they were
	 * captured, and buffers never shrink. If it did, the transaction
	 * would stay pending and hidden, as before the call. */
	int rc = buf_reserve(&d->wal, d->captured_at + d->captured_size);
	if (rc) return rc;
	memcpy(d->wal.data + d->captured_at, d->captured, (size_t)d->captured_size);
	d->wal.size = d->captured_at + d->captured_size;
	d->wal.exists = 1;
	index_restore(d, d->post_index, d->post_nregions);
	drop_captured(d);
	return SQLITE_OK;
}

/* dq_abort drops the pending transaction (it was never visible). */
int dq_abort(dq_vfs *v, const char *name) {
	dq_db *d = db_find(v, name, 0);
	if (!d || !d->pending) return SQLITE_NOTFOUND;
	drop_captured(d);
	return SQLITE_OK;
}

/* dq_apply_frames appends replicated frames (page numbers and pages) to the
 * WAL and invalidates the index header so the next reader rebuilds it. */
int dq_apply_frames(dq_vfs *v, const char *name, int page_size, int count, const uint32_t *pgnos,
                    const unsigned char *pages, uint32_t db_size) {
	dq_db *d = db_find(v, name, 1);
	if (!d) return SQLITE_NOMEM;
	if (d->pending || d->writing) return SQLITE_BUSY;
	int orc = db_open_store(v, d);
	if (orc) return orc;
	for (int i = 0; i < SQLITE_SHM_NLOCK; i++)
		if (d->shm_excl[i]) return SQLITE_BUSY;
	d->idle = 0;
	/* Room for every frame first: frames left behind by a failure part
	 * way would be read, by the recovery that rebuilds the index, as part
	 * of the next transaction replicated here. */
	sqlite3_int64 start = d->wal.size < WAL_HDR ? WAL_HDR : d->wal.size;
	if (buf_reserve(&d->wal, start + (sqlite3_int64)count * (FRAME_HDR + page_size))) return SQLITE_NOMEM;
	unsigned char h[WAL_HDR];
	uint32_t s0 = 0, s1 = 0;
	if (d->wal.size < WAL_HDR) {
		memset(h, 0, sizeof h);
		put_be32(h, 0x377f0682);
		put_be32(h + 4, 3007000);
		put_be32(h + 8, (uint32_t)page_size); /* the WAL header holds 65536 as is */
		put_be32(h + 12, 0);
		put_be32(h + 16, ++d->salt);
		put_be32(h + 20, d->salt * 2654435761u);
		wal_checksum(0, h, 24, &s0, &s1);
		put_be32(h + 24, s0);
		put_be32(h + 28, s1);
		d->wal.size = 0;
		int rc = buf_write(&d->wal, h, WAL_HDR, 0);
		if (rc) return rc;
	} else {
		uint32_t ps = get_be32(d->wal.data + 8);
		if ((ps == 1 ? 65536 : ps) != (uint32_t)page_size) return SQLITE_ERROR;
		const unsigned char *last = d->wal.size > WAL_HDR ? d->wal.data + d->wal.size - (FRAME_HDR + page_size) + 16
		                                                   : d->wal.data + 24;
		s0 = get_be32(last);
		s1 = get_be32(last + 4);
	}
	int big = get_be32(d->wal.data) & 1;
	const unsigned char *salts = d->wal.data + 16;
	for (int i = 0; i < count; i++) {
		unsigned char fh[FRAME_HDR];
		const unsigned char *page = pages + (size_t)i * (size_t)page_size;
		put_be32(fh, pgnos[i]);
		put_be32(fh + 4, i == count - 1 ? db_size : 0);
		memcpy(fh + 8, salts, 8);
		wal_checksum(big, fh, 8, &s0, &s1);
		wal_checksum(big, page, page_size, &s0, &s1);
		put_be32(fh + 16, s0);
		put_be32(fh + 20, s1);
		sqlite3_int64 off = d->wal.size;
		int rc = buf_write(&d->wal, fh, FRAME_HDR, off);
		if (rc == SQLITE_OK) rc = buf_write(&d->wal, page, page_size, off + FRAME_HDR);
		if (rc) return rc;
		salts = d->wal.data + 16; /* the buffer may have moved */
	}
	if (d->nregions > 0) ((unsigned char *)d->regions[0])[12] = 0; /* isInit of copy 1 */
	return SQLITE_OK;
}

/* dq_image returns the database as of the last commit: the main file with
 * every committed WAL frame laid over it in order, as a full checkpoint
 * would leave it. It needs no checkpoint, so readers holding old snapshots
 * (which make a checkpoint stop part way) do not matter. Frames are trusted
 * up to the first one whose salts or checksum chain fail, and applied up to
 * the last commit frame before it. The caller frees the result. */
unsigned char *dq_image(dq_vfs *v, const char *name, long long *size) {
	dq_db *d = db_find(v, name, 0);
	*size = 0;
	if (!d) return NULL;
	const unsigned char *w = d->wal.data;
	sqlite3_int64 wn = d->wal.size, commit_end = 0;
	uint32_t pgsz = 0, commit_pages = 0;
	if (wn >= WAL_HDR) {
		pgsz = get_be32(w + 8);
		if (pgsz == 1) pgsz = 65536;
		int big = get_be32(w) & 1;
		uint32_t s0 = 0, s1 = 0;
		wal_checksum(big, w, 24, &s0, &s1);
		if (pgsz >= 512 && s0 == get_be32(w + 24) && s1 == get_be32(w + 28)) {
			sqlite3_int64 fsz = FRAME_HDR + (sqlite3_int64)pgsz;
			for (sqlite3_int64 off = WAL_HDR; off + fsz <= wn; off += fsz) {
				const unsigned char *fh = w + off;
				if (memcmp(fh + 8, w + 16, 8) != 0) break;
				wal_checksum(big, fh, 8, &s0, &s1);
				wal_checksum(big, fh + FRAME_HDR, (int)pgsz, &s0, &s1);
				if (s0 != get_be32(fh + 16) || s1 != get_be32(fh + 20)) break;
				uint32_t n = get_be32(fh + 4);
				if (n) {
					commit_end = off + fsz;
					commit_pages = n;
				}
			}
		}
	}
	sqlite3_int64 msize = main_size(d);
	if (msize < 0) return NULL;
	sqlite3_int64 dbsize = commit_end ? (sqlite3_int64)commit_pages * pgsz : msize;
	unsigned char *c = dq_malloc((size_t)dbsize + 1);
	if (!c) return NULL;
	sqlite3_int64 keep = msize < dbsize ? msize : dbsize;
	int rc = main_read(d, c, keep, 0);
	if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) {
		free(c);
		return NULL;
	}
	if (keep < dbsize) memset(c + keep, 0, (size_t)(dbsize - keep));
	for (sqlite3_int64 off = WAL_HDR; off < commit_end; off += FRAME_HDR + pgsz) {
		uint32_t pgno = get_be32(w + off);
		sqlite3_int64 at = (sqlite3_int64)(pgno - 1) * pgsz;
		if (pgno >= 1 && at + pgsz <= dbsize) memcpy(c + at, w + off + FRAME_HDR, pgsz);
	}
	*size = dbsize;
	return c;
}

/* dq_wal_copy copies d's WAL as SQLite wrote it (its committed frames,
 * maybe followed by frames of an older generation, which carry other
 * salts) into *out, which the caller frees: a redo journal of what a
 * checkpoint is about to copy into the main file. *out is NULL when the
 * WAL is empty. */
int dq_wal_copy(dq_vfs *v, const char *name, unsigned char **out, long long *size) {
	dq_db *d = db_find(v, name, 0);
	*out = NULL;
	*size = 0;
	if (!d) return SQLITE_NOTFOUND;
	if (d->pending || d->writing) return SQLITE_BUSY;
	if (d->wal.size == 0) return SQLITE_OK;
	unsigned char *c = dq_malloc((size_t)d->wal.size);
	if (!c) return SQLITE_NOMEM;
	memcpy(c, d->wal.data, (size_t)d->wal.size);
	*out = c;
	*size = d->wal.size;
	return SQLITE_OK;
}

int dq_wal_size(dq_vfs *v, const char *name, long long *size) {
	dq_db *d = db_find(v, name, 0);
	*size = d ? d->wal.size : 0;
	return d ? SQLITE_OK : SQLITE_NOTFOUND;
}

/* dq_image_bound is at least the size of d's image: its main file's size
 * plus its WAL's. */
int dq_image_bound(dq_vfs *v, const char *name, long long *size) {
	dq_db *d = db_find(v, name, 0);
	*size = 0;
	if (!d) return SQLITE_NOTFOUND;
	sqlite3_int64 m = main_size(d);
	if (m < 0) return SQLITE_IOERR;
	*size = m + d->wal.size;
	return SQLITE_OK;
}

/* dq_wal_memory is the room a database's WAL buffer and its capture hold
 * allocated. */
int dq_wal_memory(dq_vfs *v, const char *name, long long *size) {
	dq_db *d = db_find(v, name, 0);
	*size = d ? d->wal.cap + d->res_wal_cap + d->res_index_cap + d->captured_cap + d->post_index_cap : 0;
	return d ? SQLITE_OK : SQLITE_NOTFOUND;
}

/* dq_restore replaces a database with an image: the WAL is emptied and the
 * index invalidated. No connection may be inside a transaction. */
int dq_restore(dq_vfs *v, const char *name, const unsigned char *data, long long size) {
	dq_db *d = db_find(v, name, 1);
	if (!d) return SQLITE_NOMEM;
	if (d->pending || d->writing || d->shared || d->exclusive) return SQLITE_BUSY;
	int rc = db_open_store(v, d);
	if (rc) return rc;
	if (d->store) {
		rc = dqStoreTruncate(d->store, 0);
		for (long long off = 0; rc == SQLITE_OK && off < size; off += 1 << 20) {
			long long k = size - off < (1 << 20) ? size - off : (1 << 20);
			rc = dqStoreWrite(d->store, (void *)(data + off), (int)k, off);
		}
		if (rc == SQLITE_OK) rc = dqStoreSync(d->store);
		if (rc) return rc;
	} else {
		/* Room first, so a failure leaves the database as it was. */
		rc = buf_reserve(&d->main, size);
		if (rc) return rc;
		d->main.size = 0;
		rc = buf_write(&d->main, data, (int)size, 0);
		if (rc) return rc;
	}
	d->wal.size = 0;
	for (int i = 0; i < d->nregions; i++) memset(d->regions[i], 0, (size_t)d->region_size);
	return SQLITE_OK;
}

/* dq_detach_store forgets d's main file handle (returned in *out, 0 if
 * none), so the next open asks the opener again: the caller closed every
 * connection and closes the file. */
int dq_detach_store(dq_vfs *v, const char *name, uintptr_t *out) {
	dq_db *d = db_find(v, name, 0);
	*out = 0;
	if (!d) return SQLITE_OK;
	if (d->pending || d->writing || d->shared || d->exclusive) return SQLITE_BUSY;
	*out = d->store;
	d->store = 0;
	d->wal.size = 0;
	for (int i = 0; i < d->nregions; i++) memset(d->regions[i], 0, (size_t)d->region_size);
	return SQLITE_OK;
}

/* dq_clear empties a database: no main file content, no WAL. No connection
 * may be inside a transaction. */
int dq_clear(dq_vfs *v, const char *name) {
	dq_db *d = db_find(v, name, 0);
	if (!d) return SQLITE_OK;
	if (d->pending || d->writing || d->shared || d->exclusive) return SQLITE_BUSY;
	if (d->store) {
		int rc = dqStoreTruncate(d->store, 0);
		if (rc) return rc;
	}
	d->main.size = 0;
	d->wal.size = 0;
	for (int i = 0; i < d->nregions; i++) memset(d->regions[i], 0, (size_t)d->region_size);
	return SQLITE_OK;
}

int dq_bind_text(sqlite3_stmt *s, int i, const char *p, int n) {
	return sqlite3_bind_text(s, i, p, n, SQLITE_TRANSIENT);
}

int dq_bind_blob(sqlite3_stmt *s, int i, const void *p, int n) {
	return sqlite3_bind_blob(s, i, p, n, SQLITE_TRANSIENT);
}

/* Client SQL runs on connections the node shares between its clients and
 * whose settings replication relies on (WAL mode, no automatic checkpoints,
 * the node's locking). The guard refuses, unless *trusted is set (the
 * node's own statements), what would change them, outlive the request on
 * the shared connection, or bypass the capture: ATTACH and DETACH (an
 * attached database is not replicated, nor is VACUUM INTO's output), TEMP
 * tables, views, triggers and indexes (they live on the leader's connection
 * only, and a TEMP table shadows the replicated table of the same name for
 * every client), a checkpoint, and setting the PRAGMAs below, which change
 * the connection or the whole process (heap limits). Reading a PRAGMA stays
 * allowed; so does setting foreign_keys inside a transaction, where SQLite
 * ignores it (every client write runs in one; sqlite3's .dump starts with
 * it). */
static const char *const guarded_pragmas[] = {
    "journal_mode", "locking_mode", "synchronous", "wal_autocheckpoint", "page_size", "mmap_size",
    "query_only", "writable_schema", "schema_version", "recursive_triggers", "ignore_check_constraints",
    "case_sensitive_like", "trusted_schema", "cell_size_check", "temp_store_directory",
    "data_store_directory", "legacy_alter_table", "journal_size_limit", "hard_heap_limit",
    "soft_heap_limit", "max_page_count", "cache_size", "cache_spill", "busy_timeout", "threads", "count_changes", "full_column_names",
    "short_column_names", "empty_result_callbacks", "temp_store", "legacy_file_format",
};

typedef struct dq_guard_state {
	int trusted;
	sqlite3 *db;
} dq_guard_state;

static int dq_authorize(void *arg, int action, const char *a, const char *b, const char *c, const char *d) {
	(void)d;
	dq_guard_state *g = arg;
	if (g->trusted) return SQLITE_OK;
	switch (action) {
	case SQLITE_ATTACH:
	case SQLITE_DETACH:
	case SQLITE_CREATE_TEMP_INDEX:
	case SQLITE_CREATE_TEMP_TABLE:
	case SQLITE_CREATE_TEMP_TRIGGER:
	case SQLITE_CREATE_TEMP_VIEW:
		return SQLITE_DENY;
	case SQLITE_CREATE_INDEX:
	case SQLITE_CREATE_TABLE:
	case SQLITE_CREATE_TRIGGER:
	case SQLITE_CREATE_VIEW:
	case SQLITE_CREATE_VTABLE:
		/* CREATE TABLE temp.x and the like: TEMP all the same. */
		return c && sqlite3_stricmp(c, "temp") == 0 ? SQLITE_DENY : SQLITE_OK;
	case SQLITE_PRAGMA:
		break;
	default:
		return SQLITE_OK;
	}
	if (!a) return SQLITE_OK;
	if (sqlite3_stricmp(a, "wal_checkpoint") == 0) return SQLITE_DENY;
	if (!b) return SQLITE_OK;
	if (sqlite3_stricmp(a, "foreign_keys") == 0) return sqlite3_get_autocommit(g->db) ? SQLITE_DENY : SQLITE_OK;
	for (size_t i = 0; i < sizeof guarded_pragmas / sizeof guarded_pragmas[0]; i++)
		if (sqlite3_stricmp(a, guarded_pragmas[i]) == 0) return SQLITE_DENY;
	return SQLITE_OK;
}

/* dq_guard installs the guard; the caller sets trusted through the
 * returned state (freed by dq_guard_free after the connection closed). */
dq_guard_state *dq_guard(sqlite3 *db) {
	dq_guard_state *g = dq_calloc(1, sizeof *g);
	if (!g) return NULL;
	g->db = db;
	if (sqlite3_set_authorizer(db, dq_authorize, g) != SQLITE_OK) {
		free(g);
		return NULL;
	}
	return g;
}

void dq_guard_trust(dq_guard_state *g, int trusted) { g->trusted = trusted; }

void dq_guard_free(dq_guard_state *g) { free(g); }

/* dq_no_checkpoint_on_close stops SQLite from checkpointing when a
 * database's last connection closes: only the node checkpoints, so it
 * knows (and records) how far a file may be ahead of its recorded index. */
int dq_no_checkpoint_on_close(sqlite3 *db) {
	return sqlite3_db_config(db, 1006 /* SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE */, 1, (int *)0);
}

/* dq_ckpt_error returns (and clears) the failure of the last checkpoint's
 * final write to db's main File: the checkpoint then copied nothing, even
 * where SQLite reported success. */
int dq_ckpt_error(sqlite3 *db) {
	int rc = 0;
	if (sqlite3_file_control(db, "main", DQ_FCNTL_CKPT_ERROR, &rc) != SQLITE_OK) return 0;
	return rc;
}

/* dq_cache_used is the memory of db's page cache (SQLITE_DBSTATUS_CACHE_USED). */
long long dq_cache_used(sqlite3 *db) {
	int cur = 0, hi = 0;
	if (sqlite3_db_status(db, 1, &cur, &hi, 0) != SQLITE_OK) return 0;
	return cur;
}
