/* tfq_loader: loader-layout compressed TFLite file -> dense model (see tfq_loader.h and FORMAT.md).
 *
 * The flatbuffer reader below is written for hostile input: positions are size_t values that are always
 * <= the buffer length, and every step compares the remaining room (`len - pos`) with what it is about to
 * read, so no sum can overflow. Integers are read byte by byte (little-endian), so alignment never matters.
 */
#include "tfq_loader.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_codebook_core.h"

/* TFLite schema field ids (tensorflow/lite/schema/schema.fbs). */
enum {
  kModelOperatorCodes = 1,
  kModelBuffers = 4,
  kModelMetadata = 6,
  kOperatorCodeCustomCode = 1,
  kBufferData = 0,
  kBufferOffset = 1,
  kBufferSize = 2,
  kMetadataName = 0,
  kMetadataBuffer = 1,
};

#define HEADER_BYTES 24u
#define ENTRY_BYTES 64u
#define MAX_WEIGHT_BYTES UINT64_C(2147483647) /* 2**31 - 1: TFLite tensor dimensions are int32 */
#define ROLE_TARGET 1u

static uint32_t read_u16(const uint8_t* p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static uint32_t read_u32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t read_u64(const uint8_t* p) { return (uint64_t)read_u32(p) | (uint64_t)read_u32(p + 4) << 32; }

/* ---- minimal bounds-checked flatbuffer reader ------------------------------------------------------- */

typedef struct Flat {
  const uint8_t* p;
  size_t n;
} Flat;

typedef struct Table {
  size_t pos;   /* start of the table (its soffset to the vtable) */
  size_t vt;    /* start of the vtable */
  size_t vsize; /* vtable size in bytes */
} Table;

/* The table at `pos`: its vtable and inline part must lie inside the buffer. */
static int table_at(const Flat* f, size_t pos, Table* t) {
  if (pos > f->n || f->n - pos < 4) return -1;
  uint32_t raw = read_u32(f->p + pos); /* soffset: vtable = pos - (int32)raw */
  size_t vt;
  if (raw < UINT32_C(0x80000000)) {
    if (raw > pos) return -1;
    vt = pos - raw;
  } else {
    uint64_t back = UINT64_C(0x100000000) - raw; /* the vtable lies after the table */
    if (back > (uint64_t)(f->n - pos)) return -1;
    vt = pos + (size_t)back;
  }
  if (vt > f->n || f->n - vt < 4) return -1;
  size_t vsize = read_u16(f->p + vt);
  size_t inline_size = read_u16(f->p + vt + 2);
  if (vsize < 4 || vsize % 2 != 0 || vsize > f->n - vt) return -1;
  if (inline_size < 4 || inline_size > f->n - pos) return -1;
  t->pos = pos;
  t->vt = vt;
  t->vsize = vsize;
  return 0;
}

/* Field `id` of `size` bytes: 1 and its position if present, 0 if absent, -1 if it lies outside. */
static int field(const Flat* f, const Table* t, unsigned id, size_t size, size_t* pos) {
  size_t slot = 4 + 2 * (size_t)id;
  if (slot + 2 > t->vsize) return 0;
  size_t voffset = read_u16(f->p + t->vt + slot);
  if (voffset == 0) return 0;
  if (voffset > f->n - t->pos || size > f->n - t->pos - voffset) return -1;
  *pos = t->pos + voffset;
  return 1;
}

/* Follows the uoffset stored at `at` (4 bytes known to lie inside). */
static int follow(const Flat* f, size_t at, size_t* target) {
  uint32_t offset = read_u32(f->p + at);
  if (offset > f->n - at) return -1;
  *target = at + offset;
  return 0;
}

/* The vector whose uoffset is stored at `at`: `count` elements of `elem` bytes from `start`. */
static int vector_at(const Flat* f, size_t at, size_t elem, size_t* start, size_t* count) {
  size_t v;
  if (follow(f, at, &v) != 0 || v > f->n || f->n - v < 4) return -1;
  size_t c = read_u32(f->p + v);
  if (c > (f->n - v - 4) / elem) return -1;
  *start = v + 4;
  *count = c;
  return 0;
}

/* Vector field `id` of a table: 1 if present, 0 if absent (count 0), -1 if corrupt. */
static int vector_field(const Flat* f, const Table* t, unsigned id, size_t elem, size_t* start,
                        size_t* count) {
  size_t at;
  int present = field(f, t, id, 4, &at);
  *start = 0;
  *count = 0;
  if (present <= 0) return present;
  return vector_at(f, at, elem, start, count) == 0 ? 1 : -1;
}

/* String field `id`: its bytes (without the NUL terminator, which must be present). */
static int string_field(const Flat* f, const Table* t, unsigned id, size_t* start, size_t* count) {
  int present = vector_field(f, t, id, 1, start, count);
  if (present <= 0) return present;
  if (*count >= f->n - *start || f->p[*start + *count] != 0) return -1;
  return 1;
}

/* Element `i` (< count) of a vector of tables starting at `start`. */
static int table_element(const Flat* f, size_t start, size_t i, Table* t) {
  size_t at = start + 4 * i, pos;
  if (follow(f, at, &pos) != 0) return -1;
  return table_at(f, pos, t);
}

static int scalar_field(const Flat* f, const Table* t, unsigned id, size_t size, uint64_t fallback,
                        uint64_t* out) {
  size_t at;
  int present = field(f, t, id, size, &at);
  if (present < 0) return -1;
  *out = present == 0 ? fallback : size == 8 ? read_u64(f->p + at) : read_u32(f->p + at);
  return 0;
}

static int equals(const Flat* f, size_t start, size_t count, const char* text) {
  size_t n = strlen(text);
  return count == n && memcmp(f->p + start, text, n) == 0;
}

/* ---- the model ---------------------------------------------------------------------------------------- */

typedef struct Model {
  Flat f;
  size_t buffers;     /* start of Model.buffers */
  size_t num_buffers;
} Model;

typedef struct BufferInfo {
  const uint8_t* data; /* NULL when the buffer has no data (absent or empty) */
  size_t data_len;
  uint64_t offset, size;
} BufferInfo;

static int read_buffer(const Model* m, size_t index, BufferInfo* b, char* err, size_t err_len) {
  Table t;
  size_t start, count;
  if (table_element(&m->f, m->buffers, index, &t) != 0) {
    return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: Model.buffers[%zu] points outside the %zu-byte file", index,
                m->f.n);
  }
  if (vector_field(&m->f, &t, kBufferData, 1, &start, &count) < 0 ||
      scalar_field(&m->f, &t, kBufferOffset, 8, 0, &b->offset) != 0 ||
      scalar_field(&m->f, &t, kBufferSize, 8, 0, &b->size) != 0) {
    return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: a field of Model.buffers[%zu] lies outside the %zu-byte file",
                index, m->f.n);
  }
  b->data = count > 0 ? m->f.p + start : NULL;
  b->data_len = count;
  return 0;
}

/* ---- the descriptor ----------------------------------------------------------------------------------- */

typedef struct Entry {
  uint32_t kind, target, payload, table;
  uint64_t A, d, B;
  uint32_t bits, K;
  uint64_t offset, size;
} Entry;

static void read_entry(const uint8_t* descriptor, uint32_t i, Entry* e) {
  const uint8_t* p = descriptor + HEADER_BYTES + (size_t)ENTRY_BYTES * i;
  e->kind = read_u32(p);
  e->target = read_u32(p + 4);
  e->payload = read_u32(p + 8);
  e->table = read_u32(p + 12);
  e->A = read_u64(p + 16);
  e->d = read_u64(p + 24);
  e->B = read_u64(p + 32);
  e->bits = read_u32(p + 40);
  e->K = read_u32(p + 44);
  e->offset = read_u64(p + 48);
  e->size = read_u64(p + 56);
}

typedef struct Plan {
  Model m;
  int loader;                 /* 0: plain file, returned unchanged */
  const uint8_t* descriptor;  /* loader layout: the descriptor's bytes */
  uint32_t count;
  uint64_t dense_size;
} Plan;

/* Reads `bits` (1..8) bits at bit `position` of an LSB-first stream; the caller guarantees
 * position + bits <= 8 * (stream length). */
static unsigned read_bits(const uint8_t* stream, uint64_t position, unsigned bits) {
  size_t byte = (size_t)(position >> 3);
  unsigned shift = (unsigned)(position & 7u);
  unsigned window = stream[byte];
  if (shift + bits > 8) window |= (unsigned)stream[byte + 1] << 8;
  return (window >> shift) & ((1u << bits) - 1u);
}

#define ENTRY_FMT "tfq_codebook entry %" PRIu32 " (kind %" PRIu32 ", target buffer %" PRIu32 ")"
#define ENTRY_ARGS(i, e) (i), (e)->kind, (e)->target

/* Kind 2: checks the table (counts and exact length) and the payload (widths and exact length). */
static int check_scalar_codes(uint32_t i, const Entry* e, const BufferInfo* payload, const BufferInfo* table,
                              char* err, size_t err_len) {
  const uint64_t G = e->A * e->B, f = e->bits, b0 = e->K;
  if (f > 3) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": width-field bits f=%" PRIu64 "; expected 0..3", ENTRY_ARGS(i, e), f);
  }
  if (b0 < 1 || b0 > 8) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": base width b0=%" PRIu64 "; expected 1..8", ENTRY_ARGS(i, e), b0);
  }
  if (table->data_len < 16) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": table buffer %" PRIu32 " has %zu bytes; expected 16 bytes of counts "
                "K_1..K_8 and the tables", ENTRY_ARGS(i, e), e->table, table->data_len);
  }
  uint64_t total = 16;
  for (unsigned w = 1; w <= 8; ++w) {
    uint64_t count = read_u16(table->data + 2 * (w - 1));
    if (count > (UINT64_C(1) << w)) {
      return tfq_codebook_fail(err, err_len, ENTRY_FMT ": table buffer %" PRIu32 " has count K_%u=%" PRIu64 "; expected <= 2^%u",
                  ENTRY_ARGS(i, e), e->table, w, count, w);
    }
    total += count;
  }
  if (total != table->data_len) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": table buffer %" PRIu32 " has %zu bytes; expected 16 + sum(K_w) = %" PRIu64,
                ENTRY_ARGS(i, e), e->table, table->data_len, total);
  }
  const uint64_t width_bytes = (G * f + 7) / 8;
  if ((uint64_t)payload->data_len < width_bytes) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": payload buffer %" PRIu32 " has %zu bytes; its width stream alone needs "
                "ceil(G*f/8) = %" PRIu64, ENTRY_ARGS(i, e), e->payload, payload->data_len, width_bytes);
  }
  uint64_t width_sum = G * b0;
  if (f > 0) { /* G * f <= 8 * payload length here, so this loop is bounded by the input */
    width_sum = 0;
    for (uint64_t g = 0; g < G; ++g) {
      uint64_t w = b0 + read_bits(payload->data, g * f, (unsigned)f);
      if (w > 8) {
        return tfq_codebook_fail(err, err_len, ENTRY_FMT ": group %" PRIu64 " (a=%" PRIu64 ", b=%" PRIu64 ") has width "
                    "b0+field = %" PRIu64 "; expected 1..8", ENTRY_ARGS(i, e), g, g / e->B, g % e->B, w);
      }
      width_sum += w;
    }
  }
  const uint64_t expected = width_bytes + (e->d * width_sum + 7) / 8;
  if ((uint64_t)payload->data_len != expected) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": payload buffer %" PRIu32 " has %zu bytes; expected ceil(G*f/8) + "
                "ceil(d*sum(w_g)/8) = %" PRIu64, ENTRY_ARGS(i, e), e->payload, payload->data_len, expected);
  }
  return 0;
}

/* First pass over the entries: the kind, the buffer indices, distinct targets (marked in `roles`). */
static int check_indices(const Model* m, uint32_t i, const Entry* e, unsigned char* roles, char* err,
                         size_t err_len) {
  if (e->kind != 1 && e->kind != 2) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": unknown kind; expected 1 (block codebook) or 2 (scalar codes)",
                ENTRY_ARGS(i, e));
  }
  const uint32_t indices[3] = {e->target, e->payload, e->table};
  static const char* const kRoles[3] = {"target", "payload", "table"};
  for (int r = 0; r < 3; ++r) {
    if (indices[r] >= m->num_buffers) {
      return tfq_codebook_fail(err, err_len, ENTRY_FMT ": %s buffer %" PRIu32 " does not exist (the model has %zu buffers)",
                  ENTRY_ARGS(i, e), kRoles[r], indices[r], m->num_buffers);
    }
  }
  if (roles[e->target] & ROLE_TARGET) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": target buffer %" PRIu32 " is the target of an earlier entry too; targets "
                "must be distinct", ENTRY_ARGS(i, e), e->target);
  }
  roles[e->target] |= ROLE_TARGET;
  return 0;
}

/* Third pass: the rest of one entry but the index / code ranges. `end` is where the previous weight ends (L
 * for the first entry) and becomes the end of this one. */
static int check_entry(const Plan* plan, uint32_t i, const Entry* e, uint64_t* end, char* err, size_t err_len) {
  const Model* m = &plan->m;
  BufferInfo target, payload, table;
  if (read_buffer(m, e->target, &target, err, err_len) != 0 ||
      read_buffer(m, e->payload, &payload, err, err_len) != 0 ||
      read_buffer(m, e->table, &table, err, err_len) != 0) {
    return -1;
  }
  if (target.data != NULL) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": target buffer %" PRIu32 " has %zu bytes of data; expected none",
                ENTRY_ARGS(i, e), e->target, target.data_len);
  }
  if (target.offset != e->offset || target.size != e->size) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": target buffer %" PRIu32 " has offset %" PRIu64 " and size %" PRIu64
                "; the entry says offset %" PRIu64 " and size %" PRIu64, ENTRY_ARGS(i, e), e->target, target.offset,
                target.size, e->offset, e->size);
  }
  if (*end > UINT64_MAX - 15) return tfq_codebook_fail(err, err_len, ENTRY_FMT ": placement overflows", ENTRY_ARGS(i, e));
  const uint64_t placed = (*end + 15) & ~UINT64_C(15);
  if (e->offset != placed) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": offset %" PRIu64 " breaks the placement rule; expected align16(%" PRIu64
                ") = %" PRIu64, ENTRY_ARGS(i, e), e->offset, *end, placed);
  }
  if (e->A < 1 || e->d < 1 || e->B < 1) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": A, d, B must be >= 1; got A=%" PRIu64 " d=%" PRIu64 " B=%" PRIu64,
                ENTRY_ARGS(i, e), e->A, e->d, e->B);
  }
  if (e->A > MAX_WEIGHT_BYTES / e->d || e->A * e->d > MAX_WEIGHT_BYTES / e->B) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": A*d*B must be at most 2^31-1; got A=%" PRIu64 " d=%" PRIu64 " B=%" PRIu64,
                ENTRY_ARGS(i, e), e->A, e->d, e->B);
  }
  if (e->A * e->d * e->B != e->size) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": A*d*B = %" PRIu64 " but size = %" PRIu64, ENTRY_ARGS(i, e),
                e->A * e->d * e->B, e->size);
  }
  *end = placed + e->size; /* placed <= UINT64_MAX - 15 and size < 2^31: no overflow below 2^64 - 2^31 */
  if (*end < placed) return tfq_codebook_fail(err, err_len, ENTRY_FMT ": placement overflows", ENTRY_ARGS(i, e));
  if (e->kind == 2) return check_scalar_codes(i, e, &payload, &table, err, err_len);
  if (e->bits < 1 || e->bits > 8) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": bits=%" PRIu32 "; expected 1..8", ENTRY_ARGS(i, e), e->bits);
  }
  if (e->K < 1 || e->K > (UINT32_C(1) << e->bits)) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": K=%" PRIu32 "; expected 1..2^bits = %" PRIu32, ENTRY_ARGS(i, e), e->K,
                UINT32_C(1) << e->bits);
  }
  const uint64_t packed = (e->A * e->B * e->bits + 7) / 8;
  if ((uint64_t)payload.data_len != packed) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": payload buffer %" PRIu32 " has %zu bytes; expected ceil(G*bits/8) = %"
                PRIu64, ENTRY_ARGS(i, e), e->payload, payload.data_len, packed);
  }
  if ((uint64_t)table.data_len != (uint64_t)e->K * e->d) {
    return tfq_codebook_fail(err, err_len, ENTRY_FMT ": table buffer %" PRIu32 " has %zu bytes; expected K*d = %" PRIu64,
                ENTRY_ARGS(i, e), e->table, table.data_len, (uint64_t)e->K * e->d);
  }
  return 0;
}

static int check_descriptor(Plan* plan, size_t descriptor_buffer, size_t max_bytes, char* err, size_t err_len) {
  const Model* m = &plan->m;
  BufferInfo info;
  if (descriptor_buffer >= m->num_buffers) {
    return tfq_codebook_fail(err, err_len, "the tfq_codebook metadata entry points at buffer %zu, which does not exist (the model "
                "has %zu buffers)", descriptor_buffer, m->num_buffers);
  }
  if (read_buffer(m, descriptor_buffer, &info, err, err_len) != 0) return -1;
  if (info.data_len < HEADER_BYTES) {
    return tfq_codebook_fail(err, err_len, "the tfq_codebook descriptor (buffer %zu) has %zu bytes; expected a 24-byte header "
                "and 64 bytes per entry", descriptor_buffer, info.data_len);
  }
  if (memcmp(info.data, TFQ_LOADER_MAGIC, 8) != 0) {
    return tfq_codebook_fail(err, err_len, "the tfq_codebook descriptor (buffer %zu) lacks the magic \"" TFQ_LOADER_MAGIC "\"",
                descriptor_buffer);
  }
  uint32_t version = read_u32(info.data + 8), count = read_u32(info.data + 12);
  if (version != 1) {
    return tfq_codebook_fail(err, err_len, "the tfq_codebook descriptor (buffer %zu) has version %" PRIu32 "; this loader reads "
                "version 1", descriptor_buffer, version);
  }
  if (count < 1) {
    return tfq_codebook_fail(err, err_len, "the tfq_codebook descriptor (buffer %zu) has entry count N=0; expected N >= 1",
                descriptor_buffer);
  }
  const uint64_t expected = HEADER_BYTES + (uint64_t)ENTRY_BYTES * count;
  if ((uint64_t)info.data_len != expected) {
    return tfq_codebook_fail(err, err_len, "the tfq_codebook descriptor (buffer %zu) has %zu bytes; expected 24 + 64*N = %" PRIu64
                " for N=%" PRIu32, descriptor_buffer, info.data_len, expected, count);
  }
  plan->descriptor = info.data;
  plan->count = count;
  plan->dense_size = read_u64(info.data + 16);

  /* count <= data_len / 64 <= file length / 64; the role array has one byte per buffer (<= len / 4). */
  unsigned char* roles = (unsigned char*)calloc(m->num_buffers > 0 ? m->num_buffers : 1, 1);
  if (roles == NULL) return tfq_codebook_fail(err, err_len, "out of memory for %zu buffer flags", m->num_buffers);
  int status = 0;
  uint64_t end = m->f.n;
  Entry e;
  for (uint32_t i = 0; i < count && status == 0; ++i) {
    read_entry(plan->descriptor, i, &e);
    status = check_indices(m, i, &e, roles, err, err_len);
  }
  for (uint32_t i = 0; i < count && status == 0; ++i) {
    read_entry(plan->descriptor, i, &e);
    if (roles[e.payload] & ROLE_TARGET) {
      status = tfq_codebook_fail(err, err_len, ENTRY_FMT ": payload buffer %" PRIu32 " is the target of an entry",
                    ENTRY_ARGS(i, &e), e.payload);
    } else if (roles[e.table] & ROLE_TARGET) {
      status = tfq_codebook_fail(err, err_len, ENTRY_FMT ": table buffer %" PRIu32 " is the target of an entry", ENTRY_ARGS(i, &e),
                    e.table);
    }
  }
  for (uint32_t i = 0; i < count && status == 0; ++i) {
    read_entry(plan->descriptor, i, &e);
    status = check_entry(plan, i, &e, &end, err, err_len);
  }
  for (size_t j = 0; j < m->num_buffers && status == 0; ++j) {
    BufferInfo b;
    status = read_buffer(m, j, &b, err, err_len);
    if (status == 0 && b.offset > 1 && !(roles[j] & ROLE_TARGET)) {
      status = tfq_codebook_fail(err, err_len, "buffer %zu has offset %" PRIu64 " (stored outside the flatbuffer) but no "
                    "tfq_codebook entry fills it", j, b.offset);
    }
  }
  free(roles);
  if (status != 0) return -1;
  if (plan->dense_size != end) {
    return tfq_codebook_fail(err, err_len, "the tfq_codebook descriptor (buffer %zu) has dense_size %" PRIu64 "; the placement "
                "rule gives %" PRIu64, descriptor_buffer, plan->dense_size, end);
  }
  if (plan->dense_size > (uint64_t)max_bytes) {
    return tfq_codebook_fail(err, err_len, "the dense model would have %" PRIu64 " bytes, more than max_bytes=%zu (the default "
                "is max(16 MiB, 256 * file length)); refusing a possible decompression bomb",
                plan->dense_size, max_bytes);
  }
  return 0;
}

/* Validates the whole file (all of FORMAT.md's checks but the index / code ranges). */
static int make_plan(const uint8_t* data, size_t len, size_t max_bytes, Plan* plan, char* err, size_t err_len) {
  memset(plan, 0, sizeof(*plan));
  if (err != NULL && err_len > 0) err[0] = '\0';
  if (data == NULL) return tfq_codebook_fail(err, err_len, "no input data (NULL pointer)");
  if (max_bytes == 0) max_bytes = tfq_default_max_bytes(len);
  if (len < 8 || memcmp(data + 4, "TFL3", 4) != 0) {
    return tfq_codebook_fail(err, err_len, "not a TFLite flatbuffer: bytes 4..8 must be the identifier \"TFL3\" (%zu bytes in "
                "all)", len);
  }
  Model* m = &plan->m;
  m->f.p = data;
  m->f.n = len;
  size_t root, start, count;
  Table model;
  if (follow(&m->f, 0, &root) != 0 || table_at(&m->f, root, &model) != 0) {
    return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: the root table lies outside the %zu-byte file", len);
  }
  if (vector_field(&m->f, &model, kModelBuffers, 4, &m->buffers, &m->num_buffers) < 0) {
    return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: Model.buffers lies outside the %zu-byte file", len);
  }
  /* A TfqCodebookDecode operator code means kernel layout, which this loader does not decode. */
  if (vector_field(&m->f, &model, kModelOperatorCodes, 4, &start, &count) < 0) {
    return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: Model.operator_codes lies outside the %zu-byte file", len);
  }
  size_t kernel_code = SIZE_MAX;
  for (size_t i = 0; i < count && kernel_code == SIZE_MAX; ++i) {
    Table code;
    size_t name, name_len;
    int present = table_element(&m->f, start, i, &code) == 0
                      ? string_field(&m->f, &code, kOperatorCodeCustomCode, &name, &name_len) : -1;
    if (present < 0) {
      return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: Model.operator_codes[%zu] lies outside the %zu-byte file", i,
                  len);
    }
    if (present > 0 && equals(&m->f, name, name_len, TFQ_CODEBOOK_OP_NAME)) kernel_code = i;
  }
  if (vector_field(&m->f, &model, kModelMetadata, 4, &start, &count) < 0) {
    return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: Model.metadata lies outside the %zu-byte file", len);
  }
  size_t found = 0;
  uint64_t descriptor_buffer = 0;
  for (size_t i = 0; i < count; ++i) {
    Table entry;
    size_t name, name_len;
    uint64_t buffer;
    int present = table_element(&m->f, start, i, &entry) == 0
                      ? string_field(&m->f, &entry, kMetadataName, &name, &name_len) : -1;
    if (present < 0 || scalar_field(&m->f, &entry, kMetadataBuffer, 4, 0, &buffer) != 0) {
      return tfq_codebook_fail(err, err_len, "corrupt flatbuffer: Model.metadata[%zu] lies outside the %zu-byte file", i, len);
    }
    if (present > 0 && equals(&m->f, name, name_len, TFQ_LOADER_METADATA_NAME)) {
      ++found;
      descriptor_buffer = buffer;
    }
  }
  if (found > 1) {
    return tfq_codebook_fail(err, err_len, "Model.metadata has %zu entries named " TFQ_LOADER_METADATA_NAME
                "; expected at most one", found);
  }
  if (found == 1 && descriptor_buffer < m->num_buffers) {
    /* A file as long as its descriptor's dense_size is a loaded model already (a compressed file is always
     * shorter: its first weight starts at or after its end): returned unchanged. */
    BufferInfo info;
    if (read_buffer(m, (size_t)descriptor_buffer, &info, err, err_len) != 0) return -1;
    if (info.data_len >= HEADER_BYTES && read_u64(info.data + 16) == (uint64_t)len) {
      plan->dense_size = len;
      return 0;
    }
  }
  if (kernel_code != SIZE_MAX) {
    if (found > 0) {
      return tfq_codebook_fail(err, err_len, "the file has both a " TFQ_LOADER_METADATA_NAME " descriptor and a "
                  TFQ_CODEBOOK_OP_NAME " operator code (operator code %zu); a compressed file uses one layout",
                  kernel_code);
    }
    return tfq_codebook_fail(err, err_len, "this is a kernel-layout file (operator code %zu is the custom op "
                TFQ_CODEBOOK_OP_NAME "); the C loader reads loader layout only: decode it with Python's "
                "tflite_export.decompress, or re-compress with compress(..., layout=\"loader\")", kernel_code);
  }
  if (found == 0) { /* not compressed: the file itself is the model, returned unchanged */
    plan->dense_size = len;
    return 0;
  }
  plan->loader = 1;
  return check_descriptor(plan, (size_t)descriptor_buffer, max_bytes, err, err_len);
}

/* Kind 2 decode; the entry was checked by check_scalar_codes. */
static int decode_scalar_codes(uint32_t i, const Entry* e, const BufferInfo* payload, const BufferInfo* table,
                               uint8_t* out, char* err, size_t err_len) {
  const uint64_t A = e->A, d = e->d, B = e->B, f = e->bits, b0 = e->K;
  uint32_t counts[9] = {0};
  const uint8_t* tables[9] = {NULL};
  size_t at = 16;
  for (unsigned w = 1; w <= 8; ++w) {
    counts[w] = read_u16(table->data + 2 * (w - 1));
    tables[w] = table->data + at;
    at += counts[w];
  }
  uint64_t code_bit = 8 * ((A * B * f + 7) / 8); /* the code stream starts at the next whole byte */
  for (uint64_t a = 0; a < A; ++a) {
    for (uint64_t b = 0; b < B; ++b) {
      const uint64_t g = a * B + b;
      const uint64_t w = f > 0 ? b0 + read_bits(payload->data, g * f, (unsigned)f) : b0;
      if (w < 1 || w > 8) { /* checked before; kept so that this function is safe on its own */
        return tfq_codebook_fail(err, err_len, ENTRY_FMT ": group %" PRIu64 " has width %" PRIu64, ENTRY_ARGS(i, e), g, w);
      }
      uint8_t* column = out + (size_t)(a * d * B + b);
      for (uint64_t t = 0; t < d; ++t, code_bit += w) {
        unsigned code = read_bits(payload->data, code_bit, (unsigned)w);
        if (code >= counts[w]) {
          return tfq_codebook_fail(err, err_len, ENTRY_FMT ": code %u of element %" PRIu64 " of group %" PRIu64 " (a=%" PRIu64
                      ", b=%" PRIu64 ") is out of range for table T_%" PRIu64 " of K_%" PRIu64 "=%" PRIu32 " values",
                      ENTRY_ARGS(i, e), code, t, g, a, b, w, w, counts[w]);
        }
        column[(size_t)(t * B)] = tables[w][code];
      }
    }
  }
  return 0;
}

static int write_plan(const Plan* plan, uint8_t* out, char* err, size_t err_len) {
  const Model* m = &plan->m;
  memcpy(out, m->f.p, m->f.n);
  if (!plan->loader) return 0;
  uint64_t end = m->f.n;
  for (uint32_t i = 0; i < plan->count; ++i) {
    Entry e;
    BufferInfo payload, table;
    read_entry(plan->descriptor, i, &e);
    if (read_buffer(m, e.payload, &payload, err, err_len) != 0 ||
        read_buffer(m, e.table, &table, err, err_len) != 0) {
      return -1;
    }
    memset(out + (size_t)end, 0, (size_t)(e.offset - end)); /* placement checked: end <= offset */
    uint8_t* weight = out + (size_t)e.offset;
    if (e.kind == 1) {
      char message[TFQ_CODEBOOK_ERR_LEN];
      TfqCodebookAttrs attrs = {(int64_t)e.A, (int64_t)e.d, (int64_t)e.B, (int64_t)e.bits, (int64_t)e.K};
      if (tfq_codebook_decode(&attrs, payload.data, payload.data_len, (const int8_t*)table.data, table.data_len,
                              (int8_t*)weight, (size_t)e.size, message, sizeof(message)) != 0) {
        return tfq_codebook_fail(err, err_len, ENTRY_FMT ": %s", ENTRY_ARGS(i, &e), message);
      }
    } else if (decode_scalar_codes(i, &e, &payload, &table, weight, err, err_len) != 0) {
      return -1;
    }
    end = e.offset + e.size;
  }
  return 0;
}

/* ---- public API ---------------------------------------------------------------------------------------- */

size_t tfq_default_max_bytes(size_t len) {
  const size_t floor = (size_t)16 << 20;
  size_t scaled = len > SIZE_MAX / 256 ? SIZE_MAX : len * 256;
  return scaled > floor ? scaled : floor;
}

int tfq_decompressed_size(const uint8_t* data, size_t len, size_t max_bytes, size_t* out_len, char* err,
                          size_t err_len) {
  Plan plan;
  if (out_len != NULL) *out_len = 0;
  if (make_plan(data, len, max_bytes, &plan, err, err_len) != 0) return -1;
  if (out_len == NULL) return tfq_codebook_fail(err, err_len, "out_len is NULL");
  *out_len = (size_t)plan.dense_size;
  return 0;
}

int tfq_decompress_into(const uint8_t* data, size_t len, size_t max_bytes, uint8_t* out, size_t out_cap,
                        size_t* out_len, char* err, size_t err_len) {
  Plan plan;
  if (out_len != NULL) *out_len = 0;
  if (make_plan(data, len, max_bytes, &plan, err, err_len) != 0) return -1;
  if (out == NULL || out_len == NULL) return tfq_codebook_fail(err, err_len, "out or out_len is NULL");
  if (out_cap < plan.dense_size) {
    return tfq_codebook_fail(err, err_len, "the output buffer has %zu bytes; the dense model needs %" PRIu64, out_cap,
                plan.dense_size);
  }
  uintptr_t in_start = (uintptr_t)data, out_start = (uintptr_t)out;
  if (in_start < out_start + (uintptr_t)plan.dense_size && out_start < in_start + (uintptr_t)len) {
    return tfq_codebook_fail(err, err_len, "the output buffer overlaps the input");
  }
  if (write_plan(&plan, out, err, err_len) != 0) return -1;
  *out_len = (size_t)plan.dense_size;
  return 0;
}

int tfq_decompress(const uint8_t* data, size_t len, size_t max_bytes, uint8_t** out, size_t* out_len, char* err,
                   size_t err_len) {
  Plan plan;
  if (out != NULL) *out = NULL;
  if (out_len != NULL) *out_len = 0;
  if (make_plan(data, len, max_bytes, &plan, err, err_len) != 0) return -1;
  if (out == NULL || out_len == NULL) return tfq_codebook_fail(err, err_len, "out or out_len is NULL");
  /* dense_size <= max_bytes (a size_t) was checked by make_plan, before this allocation */
  uint8_t* buffer = (uint8_t*)malloc(plan.dense_size > 0 ? (size_t)plan.dense_size : 1);
  if (buffer == NULL) {
    return tfq_codebook_fail(err, err_len, "out of memory allocating %" PRIu64 " bytes for the dense model", plan.dense_size);
  }
  if (write_plan(&plan, buffer, err, err_len) != 0) {
    free(buffer);
    return -1;
  }
  *out = buffer;
  *out_len = (size_t)plan.dense_size;
  return 0;
}

void tfq_free(void* p) { free(p); }
