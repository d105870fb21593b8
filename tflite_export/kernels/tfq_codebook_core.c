/* TfqCodebookDecode core: FlexBuffer options, validation and decoding (see tfq_codebook_core.h). */
#include "tfq_codebook_core.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* FlexBuffer type codes (flatbuffers/flexbuffers.h; Python's flexbuffers.Type uses the same numbers). */
enum {
  kFlexNull = 0,
  kFlexInt = 1,
  kFlexUInt = 2,
  kFlexFloat = 3,
  kFlexKey = 4,
  kFlexString = 5,
  kFlexIndirectInt = 6,
  kFlexIndirectUInt = 7,
  kFlexIndirectFloat = 8,
  kFlexMap = 9,
  kFlexVector = 10,
  kFlexVectorInt = 11,
  kFlexVectorUInt = 12,
  kFlexVectorFloat = 13,
  kFlexVectorKey = 14,
  kFlexVectorStringDeprecated = 15,
  kFlexVectorInt2 = 16,   /* 16..24: fixed-length typed vectors, (int, uint, float) x (2, 3, 4) elements */
  kFlexVectorFloat4 = 24,
  kFlexBlob = 25,
  kFlexBool = 26,
  kFlexVectorBool = 36,
};

/* Dimensions of TFLite tensors are int32, so no extent may reach 2**31. */
#define TFQ_MAX_ELEMENTS INT64_C(2147483647)

int tfq_codebook_fail(char* err, size_t err_len, const char* format, ...) {
  if (err != NULL && err_len > 0) {
    va_list args;
    va_start(args, format);
    vsnprintf(err, err_len, format, args);
    va_end(args);
  }
  return -1;
}

static int valid_width(uint64_t width) { return width == 1 || width == 2 || width == 4 || width == 8; }

static const char* flex_type_name(int type) {
  switch (type) {
    case kFlexNull: return "null";
    case kFlexInt: return "int";
    case kFlexUInt: return "uint";
    case kFlexFloat: return "float";
    case kFlexKey: return "key";
    case kFlexString: return "string";
    case kFlexIndirectInt: return "indirect int";
    case kFlexIndirectUInt: return "indirect uint";
    case kFlexIndirectFloat: return "indirect float";
    case kFlexMap: return "map";
    case kFlexVector: return "vector";
    case kFlexBlob: return "blob";
    case kFlexBool: return "bool";
    default: return "typed vector";
  }
}

/* The reader follows Python's flexbuffers module read for read (its Ref.Value decodes every value of the
 * buffer that the root map reaches), but every read must lie inside the buffer. Positions are absolute. */
typedef struct FlexReader {
  const uint8_t* buf;
  uint64_t len;
  int64_t values;   /* values decoded so far */
  int64_t scanned;  /* key and string bytes scanned so far */
  char* err;
  size_t err_len;
} FlexReader;

/* What the attribute rule needs to know of a decoded value. */
typedef struct FlexValue {
  int type;
  int is_int;     /* INT, UINT, INDIRECT_INT or INDIRECT_UINT (Python's int, not bool) */
  int fits;       /* the integer fits int64 (a uint above INT64_MAX does not) */
  int64_t value;
} FlexValue;

/* Little-endian unsigned read of `width` bytes at `pos`, failing instead of reading past the buffer. */
static int flex_read(FlexReader* r, uint64_t pos, uint64_t width, uint64_t* out) {
  if (!valid_width(width)) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: byte width %" PRIu64 " at byte %" PRIu64
                " is not 1, 2, 4 or 8", width, pos);
  }
  if (pos > r->len || width > r->len - pos) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: a %" PRIu64 "-byte read at byte %" PRIu64
                " runs past the %" PRIu64 "-byte buffer", width, pos, r->len);
  }
  uint64_t value = 0;
  for (uint64_t i = 0; i < width; ++i) value |= (uint64_t)r->buf[pos + i] << (8 * i);
  *out = value;
  return 0;
}

static int64_t sign_extend(uint64_t raw, uint64_t width) {
  if (width < 8 && (raw >> (8 * width - 1)) & 1) raw |= ~UINT64_C(0) << (8 * width);
  return (int64_t)raw;
}

/* An offset stored at `pos` (`width` bytes) that points back to `pos - offset`. */
static int flex_indirect(FlexReader* r, uint64_t pos, uint64_t width, uint64_t* target) {
  uint64_t offset;
  if (flex_read(r, pos, width, &offset) != 0) return -1;
  if (offset > pos) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: the offset %" PRIu64 " at byte %" PRIu64
                " points before the start of the buffer", offset, pos);
  }
  *target = pos - offset;
  return 0;
}

/* The size field of a vector, string, blob or map: `width` bytes just before `pos`. */
static int flex_size(FlexReader* r, uint64_t pos, uint64_t width, uint64_t* size) {
  if (pos < width) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: the size field before byte %" PRIu64
                " starts before the buffer", pos);
  }
  return flex_read(r, pos - width, width, size);
}

/* `base + index * width`, failing when it lies past the buffer (which also rules out overflow). */
static int flex_offset(FlexReader* r, uint64_t base, uint64_t index, uint64_t width, uint64_t* out) {
  if (base > r->len || index > (r->len - base) / width) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: element %" PRIu64 " of the vector at byte %" PRIu64
                " lies past the %" PRIu64 "-byte buffer", index, base, r->len);
  }
  *out = base + index * width;
  return 0;
}

static int flex_budget(FlexReader* r, int64_t scanned) {
  r->scanned += scanned;
  if (r->values > TFQ_FLEX_MAX_VALUES || r->scanned > TFQ_FLEX_MAX_SCAN) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: more than %d values or %" PRId64 " bytes of keys and "
                "strings; expected a small map of A, d, B, bits, K", TFQ_FLEX_MAX_VALUES, TFQ_FLEX_MAX_SCAN);
  }
  return 0;
}

/* A key: the bytes from `pos` up to a NUL, which must be ASCII (Python decodes keys as ASCII; without a NUL its
 * Key.__len__ returns -1, which len() refuses). */
static int flex_key(FlexReader* r, uint64_t pos, const uint8_t** key, size_t* key_len) {
  if (pos > r->len) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: a key at byte %" PRIu64 " lies past the buffer", pos);
  }
  const uint8_t* start = r->buf + pos;
  const uint8_t* nul = (const uint8_t*)memchr(start, 0, (size_t)(r->len - pos));
  size_t length = nul != NULL ? (size_t)(nul - start) : (size_t)(r->len - pos);
  if (flex_budget(r, (int64_t)length + 1) != 0) return -1;
  if (nul == NULL) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: the key at byte %" PRIu64 " is not NUL-terminated", pos);
  }
  for (size_t i = 0; i < length; ++i) {
    if (start[i] >= 0x80) {
      return tfq_codebook_fail(r->err, r->err_len, "custom options: the key at byte %" PRIu64 " is not ASCII", pos);
    }
  }
  *key = start;
  *key_len = length;
  return 0;
}

/* Strict UTF-8, as Python's bytes.decode("utf-8"): no overlong forms, no surrogates, nothing above U+10FFFF. */
static int valid_utf8(const uint8_t* s, uint64_t n) {
  uint64_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    uint64_t extra;
    uint8_t low = 0x80, high = 0xBF;  /* allowed range of the first continuation byte */
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      if (c == 0xE0) low = 0xA0;
      if (c == 0xED) high = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      if (c == 0xF0) low = 0x90;
      if (c == 0xF4) high = 0x8F;
    } else {
      return 0;
    }
    if (extra > n - i - 1) return 0;
    if (s[i + 1] < low || s[i + 1] > high) return 0;
    for (uint64_t k = 2; k <= extra; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
    }
    i += extra + 1;
  }
  return 1;
}

static const char* const kAttrNames[5] = {"A", "d", "B", "bits", "K"};

/* The attribute entries found in the root map (the last occurrence of a key wins, as in a Python dict). */
typedef struct AttrCollector {
  int found[5];
  FlexValue value[5];
} AttrCollector;

static int flex_map(FlexReader* r, uint64_t map, uint64_t width, int depth, AttrCollector* attrs);

/* Decodes (validates) the value at `pos` stored with the parent's byte width `parent_width`. */
static int flex_value(FlexReader* r, uint64_t pos, uint64_t parent_width, uint8_t packed, int depth,
                      FlexValue* out) {
  int type = packed >> 2;
  uint64_t width = UINT64_C(1) << (packed & 3);
  uint64_t raw = 0, target = 0, size = 0;
  out->type = type;
  out->is_int = 0;
  out->fits = 0;
  out->value = 0;
  ++r->values;
  if (flex_budget(r, 0) != 0) return -1;
  switch (type) {
    case kFlexNull:
      return 0;
    case kFlexBool:
      return flex_read(r, pos, parent_width, &raw);
    case kFlexInt:
    case kFlexUInt:
    case kFlexIndirectInt:
    case kFlexIndirectUInt: {
      uint64_t value_width = parent_width;
      if (type == kFlexIndirectInt || type == kFlexIndirectUInt) {
        if (flex_indirect(r, pos, parent_width, &pos) != 0) return -1;
        value_width = width;
      }
      if (flex_read(r, pos, value_width, &raw) != 0) return -1;
      out->is_int = 1;
      if (type == kFlexInt || type == kFlexIndirectInt) {
        out->value = sign_extend(raw, value_width);
        out->fits = 1;
      } else {
        out->fits = raw <= (uint64_t)INT64_MAX;
        out->value = out->fits ? (int64_t)raw : INT64_MAX;
      }
      return 0;
    }
    case kFlexFloat:
    case kFlexIndirectFloat: {
      uint64_t value_width = parent_width;
      if (type == kFlexIndirectFloat) {
        if (flex_indirect(r, pos, parent_width, &pos) != 0) return -1;
        value_width = width;
      }
      if (value_width != 4 && value_width != 8) {
        return tfq_codebook_fail(r->err, r->err_len, "custom options: a float at byte %" PRIu64 " is %" PRIu64
                    " bytes wide; floats are 4 or 8", pos, value_width);
      }
      return flex_read(r, pos, value_width, &raw);
    }
    case kFlexKey: {
      const uint8_t* key;
      size_t key_len;
      if (width != 1) {
        return tfq_codebook_fail(r->err, r->err_len, "custom options: a key value at byte %" PRIu64 " is %" PRIu64
                    " bytes wide; keys are 1", pos, width);
      }
      if (flex_indirect(r, pos, parent_width, &target) != 0) return -1;
      return flex_key(r, target, &key, &key_len);
    }
    case kFlexString:
    case kFlexBlob:
      if (flex_indirect(r, pos, parent_width, &target) != 0 || flex_size(r, target, width, &size) != 0) return -1;
      if (size > r->len - target) {
        return tfq_codebook_fail(r->err, r->err_len, "custom options: a %" PRIu64 "-byte %s at byte %" PRIu64
                    " runs past the buffer", size, flex_type_name(type), target);
      }
      if (type == kFlexString) {
        if (flex_budget(r, (int64_t)size) != 0) return -1;
        if (!valid_utf8(r->buf + target, size)) {
          return tfq_codebook_fail(r->err, r->err_len, "custom options: the string at byte %" PRIu64 " is not UTF-8", target);
        }
      }
      return 0;
    case kFlexMap:
    case kFlexVector: {
      if (depth >= TFQ_FLEX_MAX_DEPTH) {
        return tfq_codebook_fail(r->err, r->err_len, "custom options: values nested deeper than %d levels", TFQ_FLEX_MAX_DEPTH);
      }
      if (flex_indirect(r, pos, parent_width, &target) != 0) return -1;
      if (type == kFlexMap) return flex_map(r, target, width, depth + 1, NULL);
      uint64_t types = 0;
      if (flex_size(r, target, width, &size) != 0) return -1;
      if (flex_offset(r, target, size, width, &types) != 0) return -1;
      for (uint64_t i = 0; i < size; ++i) {
        FlexValue element;
        if (i >= r->len - types) {
          return tfq_codebook_fail(r->err, r->err_len, "custom options: the type byte of element %" PRIu64 " of the vector at "
                      "byte %" PRIu64 " lies past the buffer", i, target);
        }
        if (flex_value(r, target + i * width, width, r->buf[types + i], depth + 1, &element) != 0) return -1;
      }
      return 0;
    }
    default:
      break;
  }
  int typed = (type >= kFlexVectorInt && type <= kFlexVectorStringDeprecated) || type == kFlexVectorBool;
  int fixed = type >= kFlexVectorInt2 && type <= kFlexVectorFloat4;
  if (!typed && !fixed) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: unknown FlexBuffer type %d at byte %" PRIu64, type, pos);
  }
  if (flex_indirect(r, pos, parent_width, &target) != 0) return -1;
  int element_type;
  if (fixed) {
    element_type = kFlexInt + (type - kFlexVectorInt2) % 3;
    size = (uint64_t)((type - kFlexVectorInt2) / 3 + 2);
  } else {
    element_type = type == kFlexVectorBool ? kFlexBool : kFlexInt + (type - kFlexVectorInt);
    if (element_type == kFlexString) element_type = kFlexKey;  /* Python reads the deprecated kind as keys */
    if (flex_size(r, target, width, &size) != 0) return -1;
    if (size == 0) return 0;  /* Python returns [] without reading any element */
  }
  uint64_t end;
  if (flex_offset(r, target, size, width, &end) != 0) return -1;
  if (element_type == kFlexFloat && width != 4 && width != 8) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: the float vector at byte %" PRIu64 " is %" PRIu64
                " bytes wide; floats are 4 or 8", target, width);
  }
  if (element_type == kFlexKey) {
    for (uint64_t i = 0; i < size; ++i) {
      const uint8_t* key;
      size_t key_len;
      ++r->values;
      if (flex_budget(r, 0) != 0 || flex_indirect(r, target + i * width, width, &raw) != 0 ||
          flex_key(r, raw, &key, &key_len) != 0) {
        return -1;
      }
    }
  }
  return 0;
}

/* A map at `map`: size, key-vector byte width and key-vector offset in the three `width`-byte fields before it,
 * `size` values of `width` bytes, then one type byte per value. */
static int flex_map(FlexReader* r, uint64_t map, uint64_t width, int depth, AttrCollector* attrs) {
  uint64_t size = 0, keys_width = 0, keys = 0, key_count = 0, types = 0;
  if (map < 3 * width) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: the map header before byte %" PRIu64 " starts before the "
                "buffer", map);
  }
  if (flex_read(r, map - width, width, &size) != 0 || flex_read(r, map - 2 * width, width, &keys_width) != 0) {
    return -1;
  }
  if (!valid_width(keys_width)) {
    return tfq_codebook_fail(r->err, r->err_len, "custom options: the key vector of the map at byte %" PRIu64 " has byte "
                "width %" PRIu64 "; expected 1, 2, 4 or 8", map, keys_width);
  }
  if (flex_indirect(r, map - 3 * width, width, &keys) != 0 || flex_size(r, keys, keys_width, &key_count) != 0) {
    return -1;
  }
  uint64_t count = key_count < size ? key_count : size;  /* Python pairs keys and values with zip */
  if (count > 0 && flex_offset(r, map, size, width, &types) != 0) return -1;
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t key_slot = 0, key_pos = 0;
    const uint8_t* key;
    size_t key_len;
    FlexValue value;
    if (flex_offset(r, keys, i, keys_width, &key_slot) != 0 ||
        flex_indirect(r, key_slot, keys_width, &key_pos) != 0 || flex_key(r, key_pos, &key, &key_len) != 0) {
      return -1;
    }
    if (i >= r->len - types) {
      return tfq_codebook_fail(r->err, r->err_len, "custom options: the type byte of entry %" PRIu64 " of the map at byte "
                  "%" PRIu64 " lies past the buffer", i, map);
    }
    if (flex_value(r, map + i * width, width, r->buf[types + i], depth, &value) != 0) return -1;
    if (attrs == NULL) continue;
    for (int j = 0; j < 5; ++j) {
      if (key_len == strlen(kAttrNames[j]) && memcmp(key, kAttrNames[j], key_len) == 0) {
        attrs->found[j] = 1;
        attrs->value[j] = value;
      }
    }
  }
  return 0;
}

int tfq_codebook_parse_options(const uint8_t* buf, size_t len, TfqCodebookAttrs* attrs, char* err,
                               size_t err_len) {
  FlexReader reader = {buf, (uint64_t)len, 0, 0, err, err_len};
  AttrCollector found;
  memset(&found, 0, sizeof(found));
  if (buf == NULL || len < 3) {
    return tfq_codebook_fail(err, err_len, "custom options must be a FlexBuffer map of A, d, B, bits, K; got %zu bytes",
                len);
  }
  uint64_t root_width = buf[len - 1];
  uint8_t root_type = buf[len - 2];
  if (!valid_width(root_width) || root_width > len - 2) {
    return tfq_codebook_fail(err, err_len, "custom options are not a FlexBuffer (root byte width %" PRIu64 ")", root_width);
  }
  if ((root_type >> 2) != kFlexMap) {
    return tfq_codebook_fail(err, err_len, "custom options must be a FlexBuffer map; the root has type %d (%s)", root_type >> 2,
                flex_type_name(root_type >> 2));
  }
  uint64_t map;
  if (flex_indirect(&reader, len - 2 - root_width, root_width, &map) != 0 ||
      flex_map(&reader, map, UINT64_C(1) << (root_type & 3), 1, &found) != 0) {
    return -1;
  }
  int64_t values[5];
  for (int j = 0; j < 5; ++j) {
    const FlexValue* v = &found.value[j];
    if (!found.found[j]) {
      return tfq_codebook_fail(err, err_len, "custom options lack attribute %s; expected integers A, d, B, bits, K",
                  kAttrNames[j]);
    }
    if (!v->is_int) {
      return tfq_codebook_fail(err, err_len, "custom options: attribute %s must be an integer; got a FlexBuffer %s",
                  kAttrNames[j], flex_type_name(v->type));
    }
    if (!v->fits) {
      return tfq_codebook_fail(err, err_len, "custom options: attribute %s is an unsigned integer above 2**63; out of range",
                  kAttrNames[j]);
    }
    values[j] = v->value;
  }
  attrs->A = values[0];
  attrs->d = values[1];
  attrs->B = values[2];
  attrs->bits = values[3];
  attrs->K = values[4];
  return tfq_codebook_check_attrs(attrs, err, err_len);
}

int tfq_codebook_check_attrs(const TfqCodebookAttrs* a, char* err, size_t err_len) {
  if (a->A < 1 || a->d < 1 || a->B < 1) {
    return tfq_codebook_fail(err, err_len, "attributes A, d, B must be >= 1; got A=%" PRId64 " d=%" PRId64 " B=%" PRId64,
                a->A, a->d, a->B);
  }
  if (a->bits < 1 || a->bits > 8) {
    return tfq_codebook_fail(err, err_len, "attribute bits must be in 1..8; got bits=%" PRId64, a->bits);
  }
  if (a->K < 1 || a->K > (INT64_C(1) << a->bits)) {
    return tfq_codebook_fail(err, err_len, "attribute K must be in 1..2**bits=%" PRId64 "; got K=%" PRId64,
                INT64_C(1) << a->bits, a->K);
  }
  if (a->A > TFQ_MAX_ELEMENTS / a->d || a->A * a->d > TFQ_MAX_ELEMENTS / a->B) {
    return tfq_codebook_fail(err, err_len, "A*d*B must be below 2**31; got A=%" PRId64 " d=%" PRId64 " B=%" PRId64, a->A,
                a->d, a->B);
  }
  if (a->K > TFQ_MAX_ELEMENTS / a->d) {
    return tfq_codebook_fail(err, err_len, "K*d must be below 2**31; got K=%" PRId64 " d=%" PRId64, a->K, a->d);
  }
  return 0;
}

int64_t tfq_codebook_packed_bytes(const TfqCodebookAttrs* a) { return (a->A * a->B * a->bits + 7) / 8; }

int tfq_codebook_check_sizes(const TfqCodebookAttrs* a, size_t packed_len, size_t codebook_len, size_t out_len,
                             char* err, size_t err_len) {
  int64_t packed = tfq_codebook_packed_bytes(a);
  if ((uint64_t)packed != (uint64_t)packed_len) {
    return tfq_codebook_fail(err, err_len,
                "packed indices have %zu bytes; expected ceil(A*B*bits/8)=%" PRId64 " for A=%" PRId64
                " B=%" PRId64 " bits=%" PRId64,
                packed_len, packed, a->A, a->B, a->bits);
  }
  if ((uint64_t)(a->K * a->d) != (uint64_t)codebook_len) {
    return tfq_codebook_fail(err, err_len, "codebook has %zu bytes; expected K*d=%" PRId64 " for K=%" PRId64 " d=%" PRId64,
                codebook_len, a->K * a->d, a->K, a->d);
  }
  if ((uint64_t)(a->A * a->d * a->B) != (uint64_t)out_len) {
    return tfq_codebook_fail(err, err_len, "output has %zu elements; expected A*d*B=%" PRId64, out_len, a->A * a->d * a->B);
  }
  return 0;
}

int tfq_codebook_decode(const TfqCodebookAttrs* a, const uint8_t* packed, size_t packed_len,
                        const int8_t* codebook, size_t codebook_len, int8_t* out, size_t out_len, char* err,
                        size_t err_len) {
  if (tfq_codebook_check_sizes(a, packed_len, codebook_len, out_len, err, err_len) != 0) return -1;
  if (packed == NULL || codebook == NULL || out == NULL) {
    return tfq_codebook_fail(err, err_len, "missing data: packed=%p codebook=%p out=%p", (const void*)packed,
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
        return tfq_codebook_fail(err, err_len, "index %" PRId64 " of block (%" PRId64 ", %" PRId64 ") is out of range for a "
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

int tfq_codebook_parse_options_buffer(const uint8_t* options, size_t options_len, int64_t* values, char* err,
                                      size_t err_len) {
  TfqCodebookAttrs attrs;
  if (tfq_codebook_parse_options(options, options_len, &attrs, err, err_len) != 0) return -1;
  values[0] = attrs.A;
  values[1] = attrs.d;
  values[2] = attrs.B;
  values[3] = attrs.bits;
  values[4] = attrs.K;
  return 0;
}

void tfq_codebook_order_begin(TfqCodebookOrder* order, int tensor, const char* what) {
  order->tensor = tensor;
  order->self_step = -1;
  order->step = 0;
  order->what = what != NULL ? what : "execution plan";
}

static int contains(const int* list, int count, int value) {
  for (int i = 0; list != NULL && i < count; ++i) {
    if (list[i] == value) return 1;
  }
  return 0;
}

int tfq_codebook_order_node(TfqCodebookOrder* order, int node_index, int is_self, const int* inputs,
                            int num_inputs, const int* outputs, int num_outputs, char* err, size_t err_len) {
  int step = order->step++;
  if (is_self) {
    if (order->self_step >= 0) {
      return tfq_codebook_fail(err, err_len, "the decode node appears twice in the %s (steps %d and %d)", order->what,
                  order->self_step, step);
    }
    order->self_step = step;
    return 0;
  }
  if (contains(outputs, num_outputs, order->tensor)) {
    return tfq_codebook_fail(err, err_len, "node %d (step %d of the %s) also writes the decoded tensor %d; it must be written "
                "by this decode node only", node_index, step, order->what, order->tensor);
  }
  if (order->self_step < 0 && contains(inputs, num_inputs, order->tensor)) {
    return tfq_codebook_fail(err, err_len, "node %d (step %d of the %s) reads the decoded tensor %d before this decode node "
                "writes it; the decode node must come before every reader", node_index, step, order->what,
                order->tensor);
  }
  return 0;
}

int tfq_codebook_order_end(const TfqCodebookOrder* order, char* err, size_t err_len) {
  if (order->self_step < 0) {
    return tfq_codebook_fail(err, err_len, "the decode node is not in the %s (%d steps)", order->what, order->step);
  }
  return 0;
}

int tfq_codebook_check_output_allocation(int allocation_type, int is_variable, char* err, size_t err_len) {
  static const char* const kNames[] = {"kTfLiteMemNone", "kTfLiteMmapRo", "kTfLiteArenaRw",
                                       "kTfLiteArenaRwPersistent", "kTfLiteDynamic", "kTfLitePersistentRo",
                                       "kTfLiteCustom", "kTfLiteVariantObject", "kTfLiteNonCpu"};
  const char* name =
      allocation_type >= 0 && allocation_type <= TFQ_ALLOC_NON_CPU ? kNames[allocation_type] : "unknown";
  if (allocation_type == TFQ_ALLOC_MMAP_RO) {
    return tfq_codebook_fail(err, err_len, "the output tensor holds constant data from the model (allocation %s); a decode "
                "node must write a tensor without a buffer, and model memory is never written", name);
  }
  if (allocation_type != TFQ_ALLOC_ARENA_RW && allocation_type != TFQ_ALLOC_ARENA_RW_PERSISTENT &&
      allocation_type != TFQ_ALLOC_DYNAMIC) {
    return tfq_codebook_fail(err, err_len, "the output tensor has allocation type %d (%s); expected memory the runtime lets "
                "an op write (kTfLiteArenaRw, kTfLiteArenaRwPersistent or kTfLiteDynamic)", allocation_type, name);
  }
  if (is_variable) {
    return tfq_codebook_fail(err, err_len, "the output tensor is a variable tensor; a decode node must write a plain "
                "intermediate tensor");
  }
  return 0;
}

const char* tfq_codebook_safe_name(const char* name, char* out, size_t out_len) {
  if (out == NULL || out_len == 0) return "";
  size_t n = 0;
  if (name != NULL) {
    for (; name[n] != '\0' && n + 1 < out_len; ++n) {
      unsigned char c = (unsigned char)name[n];
      out[n] = c >= 0x20 && c < 0x7F ? (char)c : '?';
    }
    if (name[n] != '\0' && out_len >= 4) {  /* truncated */
      memcpy(out + out_len - 4, "...", 3);
      n = out_len - 1;
    }
  }
  out[n] = '\0';
  return out;
}
