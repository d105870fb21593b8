/* TfqCodebookDecode core: FlexBuffer options, validation and decoding (see tfq_codebook_core.h). */
#include "tfq_codebook_core.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* FlexBuffer type codes used here (the FlexBuffers format, flatbuffers/flexbuffers.h documents them). */
enum {
  kFlexInt = 1,
  kFlexUInt = 2,
  kFlexIndirectInt = 6,
  kFlexIndirectUInt = 7,
  kFlexMap = 9,
};

/* Dimensions of TFLite tensors are int32, so no extent may reach 2**31. */
#define TFQ_MAX_ELEMENTS INT64_C(2147483647)

static int fail(char* err, size_t err_len, const char* format, ...) {
  if (err != NULL && err_len > 0) {
    va_list args;
    va_start(args, format);
    vsnprintf(err, err_len, format, args);
    va_end(args);
  }
  return -1;
}

static int valid_width(uint64_t width) { return width == 1 || width == 2 || width == 4 || width == 8; }

/* Little-endian unsigned read of `width` bytes at `pos`, failing instead of reading past `len`. */
static int read_uint(const uint8_t* buf, size_t len, size_t pos, uint64_t width, uint64_t* out) {
  if (!valid_width(width) || pos > len || width > len - pos) return -1;
  uint64_t value = 0;
  for (uint64_t i = 0; i < width; ++i) value |= (uint64_t)buf[pos + i] << (8 * i);
  *out = value;
  return 0;
}

static int read_int(const uint8_t* buf, size_t len, size_t pos, uint64_t width, int64_t* out) {
  uint64_t raw;
  if (read_uint(buf, len, pos, width, &raw) != 0) return -1;
  if (width < 8 && (raw >> (8 * width - 1)) & 1) raw |= ~UINT64_C(0) << (8 * width);  /* sign-extend */
  *out = (int64_t)raw;
  return 0;
}

/* Reads the integer value of map entry `slot` whose packed type byte is `packed_type`. */
static int read_entry(const uint8_t* buf, size_t len, size_t slot, uint64_t width, uint8_t packed_type,
                      int64_t* out) {
  int type = packed_type >> 2;
  if (type == kFlexInt) return read_int(buf, len, slot, width, out);
  if (type == kFlexUInt) {
    uint64_t raw;
    if (read_uint(buf, len, slot, width, &raw) != 0 || raw > (uint64_t)INT64_MAX) return -1;
    *out = (int64_t)raw;
    return 0;
  }
  if (type == kFlexIndirectInt || type == kFlexIndirectUInt) {
    uint64_t offset;
    if (read_uint(buf, len, slot, width, &offset) != 0 || offset > slot) return -1;
    uint64_t target_width = UINT64_C(1) << (packed_type & 3);
    if (type == kFlexIndirectInt) return read_int(buf, len, slot - offset, target_width, out);
    uint64_t raw;
    if (read_uint(buf, len, slot - offset, target_width, &raw) != 0 || raw > (uint64_t)INT64_MAX) return -1;
    *out = (int64_t)raw;
    return 0;
  }
  return -1;
}

int tfq_codebook_parse_options(const uint8_t* buf, size_t len, TfqCodebookAttrs* attrs, char* err,
                               size_t err_len) {
  static const char* const kNames[5] = {"A", "d", "B", "bits", "K"};
  int64_t values_found[5] = {0, 0, 0, 0, 0};
  int found = 0;
  if (buf == NULL || len < 3) {
    return fail(err, err_len, "custom options must be a FlexBuffer map of A, d, B, bits, K; got %zu bytes",
                len);
  }
  uint64_t root_width = buf[len - 1];
  uint8_t root_type = buf[len - 2];
  if (!valid_width(root_width) || root_width > len - 2) {
    return fail(err, err_len, "custom options are not a FlexBuffer (root byte width %" PRIu64 ")", root_width);
  }
  if ((root_type >> 2) != kFlexMap) {
    return fail(err, err_len, "custom options must be a FlexBuffer map; the root has type %d", root_type >> 2);
  }
  size_t root = len - 2 - (size_t)root_width;
  uint64_t width = UINT64_C(1) << (root_type & 3);
  uint64_t offset, size, keys_width, keys_offset;
  if (read_uint(buf, len, root, root_width, &offset) != 0 || offset > root || root - offset < 3 * width) {
    return fail(err, err_len, "custom options: the map offset points outside the %zu-byte buffer", len);
  }
  size_t values = root - (size_t)offset;
  if (read_uint(buf, len, values - width, width, &size) != 0 ||
      read_uint(buf, len, values - 2 * width, width, &keys_width) != 0 ||
      read_uint(buf, len, values - 3 * width, width, &keys_offset) != 0) {
    return fail(err, err_len, "custom options: truncated map header");
  }
  /* Each entry takes `width` bytes of value plus one type byte after the values. */
  if (size > (len - values) / (width + 1)) {
    return fail(err, err_len, "custom options: map of %" PRIu64 " entries overruns the buffer", size);
  }
  size_t keys_field = values - 3 * (size_t)width;
  uint64_t key_count;
  if (!valid_width(keys_width) || keys_offset > keys_field || keys_field - keys_offset < keys_width ||
      read_uint(buf, len, keys_field - keys_offset - keys_width, keys_width, &key_count) != 0 ||
      key_count != size) {
    return fail(err, err_len, "custom options: corrupt key vector");
  }
  size_t keys = keys_field - (size_t)keys_offset;
  if (size > (len - keys) / keys_width) {
    return fail(err, err_len, "custom options: key vector overruns the buffer");
  }
  for (size_t i = 0; i < (size_t)size; ++i) {
    size_t key_slot = keys + i * (size_t)keys_width;
    uint64_t key_offset;
    if (read_uint(buf, len, key_slot, keys_width, &key_offset) != 0 || key_offset > key_slot) {
      return fail(err, err_len, "custom options: key %zu points outside the buffer", i);
    }
    const uint8_t* key = buf + (key_slot - key_offset);
    size_t room = len - (key_slot - key_offset);
    if (memchr(key, 0, room) == NULL) {
      return fail(err, err_len, "custom options: key %zu is not NUL-terminated", i);
    }
    for (int j = 0; j < 5; ++j) {
      if (strcmp((const char*)key, kNames[j]) != 0) continue;
      size_t slot = values + i * (size_t)width;
      uint8_t packed_type = buf[values + (size_t)size * (size_t)width + i];
      if (read_entry(buf, len, slot, width, packed_type, &values_found[j]) != 0) {
        return fail(err, err_len, "custom options: attribute %s must be an integer (FlexBuffer type %d)",
                    kNames[j], packed_type >> 2);
      }
      found |= 1 << j;
    }
  }
  for (int j = 0; j < 5; ++j) {
    if (!(found & (1 << j))) {
      return fail(err, err_len, "custom options lack attribute %s; expected integers A, d, B, bits, K",
                  kNames[j]);
    }
  }
  attrs->A = values_found[0];
  attrs->d = values_found[1];
  attrs->B = values_found[2];
  attrs->bits = values_found[3];
  attrs->K = values_found[4];
  return tfq_codebook_check_attrs(attrs, err, err_len);
}

int tfq_codebook_check_attrs(const TfqCodebookAttrs* a, char* err, size_t err_len) {
  if (a->A < 1 || a->d < 1 || a->B < 1) {
    return fail(err, err_len, "attributes A, d, B must be >= 1; got A=%" PRId64 " d=%" PRId64 " B=%" PRId64,
                a->A, a->d, a->B);
  }
  if (a->bits < 1 || a->bits > 8) {
    return fail(err, err_len, "attribute bits must be in 1..8; got bits=%" PRId64, a->bits);
  }
  if (a->K < 1 || a->K > (INT64_C(1) << a->bits)) {
    return fail(err, err_len, "attribute K must be in 1..2**bits=%" PRId64 "; got K=%" PRId64,
                INT64_C(1) << a->bits, a->K);
  }
  if (a->A > TFQ_MAX_ELEMENTS / a->d || a->A * a->d > TFQ_MAX_ELEMENTS / a->B) {
    return fail(err, err_len, "A*d*B must be below 2**31; got A=%" PRId64 " d=%" PRId64 " B=%" PRId64, a->A,
                a->d, a->B);
  }
  if (a->K > TFQ_MAX_ELEMENTS / a->d) {
    return fail(err, err_len, "K*d must be below 2**31; got K=%" PRId64 " d=%" PRId64, a->K, a->d);
  }
  return 0;
}

int64_t tfq_codebook_packed_bytes(const TfqCodebookAttrs* a) { return (a->A * a->B * a->bits + 7) / 8; }

int tfq_codebook_check_sizes(const TfqCodebookAttrs* a, size_t packed_len, size_t codebook_len, size_t out_len,
                             char* err, size_t err_len) {
  int64_t packed = tfq_codebook_packed_bytes(a);
  if ((uint64_t)packed != (uint64_t)packed_len) {
    return fail(err, err_len,
                "packed indices have %zu bytes; expected ceil(A*B*bits/8)=%" PRId64 " for A=%" PRId64
                " B=%" PRId64 " bits=%" PRId64,
                packed_len, packed, a->A, a->B, a->bits);
  }
  if ((uint64_t)(a->K * a->d) != (uint64_t)codebook_len) {
    return fail(err, err_len, "codebook has %zu bytes; expected K*d=%" PRId64 " for K=%" PRId64 " d=%" PRId64,
                codebook_len, a->K * a->d, a->K, a->d);
  }
  if ((uint64_t)(a->A * a->d * a->B) != (uint64_t)out_len) {
    return fail(err, err_len, "output has %zu elements; expected A*d*B=%" PRId64, out_len, a->A * a->d * a->B);
  }
  return 0;
}

int tfq_codebook_decode(const TfqCodebookAttrs* a, const uint8_t* packed, size_t packed_len,
                        const int8_t* codebook, size_t codebook_len, int8_t* out, size_t out_len, char* err,
                        size_t err_len) {
  if (tfq_codebook_check_sizes(a, packed_len, codebook_len, out_len, err, err_len) != 0) return -1;
  if (packed == NULL || codebook == NULL || out == NULL) {
    return fail(err, err_len, "missing data: packed=%p codebook=%p out=%p", (const void*)packed,
                (const void*)codebook, (void*)out);
  }
  const int64_t A = a->A, d = a->d, B = a->B, bits = a->bits, K = a->K;
  const unsigned mask = (1u << bits) - 1u;
  int64_t position = 0;  /* bit offset of the current index in the LSB-first stream */
  for (int64_t i = 0; i < A; ++i) {
    for (int64_t b = 0; b < B; ++b, position += bits) {
      size_t byte = (size_t)(position >> 3);
      unsigned shift = (unsigned)(position & 7);
      unsigned window = packed[byte];
      /* An index straddles two bytes only when they exist: packed_len == ceil(A*B*bits/8). */
      if (shift + (unsigned)bits > 8) window |= (unsigned)packed[byte + 1] << 8;
      int64_t index = (int64_t)((window >> shift) & mask);
      if (index >= K) {
        return fail(err, err_len, "index %" PRId64 " of block (%" PRId64 ", %" PRId64 ") is out of range for a "
                    "codebook of K=%" PRId64 " rows", index, i, b, K);
      }
      const int8_t* row = codebook + index * d;
      if (B == 1) {
        memcpy(out + i * d, row, (size_t)d);
      } else {
        int8_t* column = out + i * d * B + b;
        for (int64_t t = 0; t < d; ++t) column[t * B] = row[t];
      }
    }
  }
  return 0;
}

int tfq_codebook_decode_buffer(const uint8_t* options, size_t options_len, const uint8_t* packed,
                               size_t packed_len, const int8_t* codebook, size_t codebook_len, int8_t* out,
                               size_t out_len, char* err, size_t err_len) {
  TfqCodebookAttrs attrs;
  if (tfq_codebook_parse_options(options, options_len, &attrs, err, err_len) != 0) return -1;
  return tfq_codebook_decode(&attrs, packed, packed_len, codebook, codebook_len, out, out_len, err, err_len);
}
