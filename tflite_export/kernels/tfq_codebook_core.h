/* TfqCodebookDecode: attribute parsing, validation and decoding, independent of any TFLite header.
 *
 * A compressed weight is the int8 buffer of a tensor viewed as shape (A, d, B), row-major; block (a, b) is
 * the d elements x[a, :, b]. It is stored as one index per block, packed LSB-first with `bits` bits each
 * in block order a-major then b, plus an int8 codebook of K rows of d values. Decoding writes
 * x[a, t, b] = codebook[index(a, b), t]. An index >= K is invalid.
 *
 * Every function bounds-checks its inputs and returns 0 on success or -1 with a message in `err`; none
 * reads or writes outside the buffers it is given.
 */
#ifndef TFQ_CODEBOOK_CORE_H_
#define TFQ_CODEBOOK_CORE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TFQ_CODEBOOK_OP_NAME "TfqCodebookDecode"
#define TFQ_CODEBOOK_ERR_LEN 256

#if defined(__GNUC__)
#define TFQ_EXPORT __attribute__((visibility("default")))
#else
#define TFQ_EXPORT
#endif

typedef struct TfqCodebookAttrs {
  int64_t A;    /* outer extent: blocks per column of the (A, d, B) view */
  int64_t d;    /* block length */
  int64_t B;    /* inner extent (stride between block elements) */
  int64_t bits; /* bits per packed index, 1..8 */
  int64_t K;    /* codebook rows, 1..2**bits */
} TfqCodebookAttrs;

/* Writes a printf-style message into err (when err_len > 0) and returns -1; shared by the kernel and the
 * loader (not exported from the libraries). */
int tfq_codebook_fail(char* err, size_t err_len, const char* format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Reads the custom options: a FlexBuffer map with integer entries A, d, B, bits, K. Fills and checks
 * `attrs` (see tfq_codebook_check_attrs).
 *
 * Accepts exactly the buffers that Python's `flatbuffers.flexbuffers.Loads` decodes into a dict whose values
 * for A, d, B, bits, K are integers (not bools) passing tfq_codebook_check_attrs, with these exceptions, all
 * rejected here: a read Python makes outside the buffer (its slicing wraps negative positions, shortens
 * reads past the end, and ends a vector early when an element's type byte lies past the end, instead of
 * failing); nesting deeper than TFQ_FLEX_MAX_DEPTH; more than TFQ_FLEX_MAX_VALUES values, or more than
 * TFQ_FLEX_MAX_SCAN bytes of keys and strings scanned. Every value is decoded as Python decodes it (extra
 * keys included: keys must be ASCII, strings UTF-8, floats 4 or 8 bytes wide, ...); a key that appears
 * twice counts with its last value, as in a Python dict; a map whose key vector and value vector differ in
 * length has the shorter length, as Python's zip gives. */
int tfq_codebook_parse_options(const uint8_t* buf, size_t len, TfqCodebookAttrs* attrs, char* err,
                               size_t err_len);

#define TFQ_FLEX_MAX_DEPTH 64
#define TFQ_FLEX_MAX_VALUES 16384
#define TFQ_FLEX_MAX_SCAN (INT64_C(1) << 24)

/* Attribute sanity: positive extents, 1 <= bits <= 8, 1 <= K <= 2**bits, A*d*B and K*d below 2**31. */
int tfq_codebook_check_attrs(const TfqCodebookAttrs* attrs, char* err, size_t err_len);

/* Bytes the packed indices must have: ceil(A * B * bits / 8). */
int64_t tfq_codebook_packed_bytes(const TfqCodebookAttrs* attrs);

/* Buffer lengths against the attributes: packed == ceil(A*B*bits/8), codebook == K*d, out == A*d*B. */
int tfq_codebook_check_sizes(const TfqCodebookAttrs* attrs, size_t packed_len, size_t codebook_len,
                             size_t out_len, char* err, size_t err_len);

/* Checks sizes, then decodes; fails on the first index >= K (the output is then incomplete). */
int tfq_codebook_decode(const TfqCodebookAttrs* attrs, const uint8_t* packed, size_t packed_len,
                        const int8_t* codebook, size_t codebook_len, int8_t* out, size_t out_len, char* err,
                        size_t err_len);

/* Order check of a decode node, shared by both entry points. The caller reports the nodes of one order in
 * sequence: the operator order of the file (node indices 0, 1, ..., which is also the execution plan before
 * delegation) and the execution plan that runs (after delegation). The check fails when a node other than the
 * decode node writes the decode output, when a node that comes before the decode node reads it, or when the
 * decode node is missing or appears twice. Messages name the node index and the tensor. */
typedef struct TfqCodebookOrder {
  int tensor;        /* the decode output (tensor index) */
  int self_step;     /* step of the decode node, -1 until it is seen */
  int step;          /* step of the next node reported */
  const char* what;  /* "operator order" or "execution plan", for messages */
} TfqCodebookOrder;

void tfq_codebook_order_begin(TfqCodebookOrder* order, int tensor, const char* what);

/* One node: `node_index` (as the runtime numbers it), whether it is the decode node itself, and its input and
 * output tensor indices. */
int tfq_codebook_order_node(TfqCodebookOrder* order, int node_index, int is_self, const int* inputs,
                            int num_inputs, const int* outputs, int num_outputs, char* err, size_t err_len);

/* After the last node: fails when the decode node was not seen. */
int tfq_codebook_order_end(const TfqCodebookOrder* order, char* err, size_t err_len);

/* TFLite allocation types (TfLiteAllocationType in tensorflow/lite/core/c/common.h) and the check both entry
 * points apply to the decode output: it must be memory the runtime owns and expects an op to write
 * (kTfLiteArenaRw, kTfLiteArenaRwPersistent or kTfLiteDynamic), not model memory (kTfLiteMmapRo), data a
 * kernel populated at prepare time (kTfLitePersistentRo) or a buffer the caller supplied (kTfLiteCustom). */
enum {
  TFQ_ALLOC_MEM_NONE = 0,
  TFQ_ALLOC_MMAP_RO = 1,
  TFQ_ALLOC_ARENA_RW = 2,
  TFQ_ALLOC_ARENA_RW_PERSISTENT = 3,
  TFQ_ALLOC_DYNAMIC = 4,
  TFQ_ALLOC_PERSISTENT_RO = 5,
  TFQ_ALLOC_CUSTOM = 6,
  TFQ_ALLOC_VARIANT_OBJECT = 7,
  TFQ_ALLOC_NON_CPU = 8,
};

int tfq_codebook_check_output_allocation(int allocation_type, int is_variable, char* err, size_t err_len);

/* A tensor name for messages: printable ASCII is kept, every other byte becomes '?', at most out_len - 1 bytes
 * (a name longer than that ends in "..."); NULL gives "". Error text must stay ASCII because hosts decode it
 * (Python's interpreter decodes TFLite's messages as UTF-8 and fails on other bytes). Returns `out`. */
const char* tfq_codebook_safe_name(const char* name, char* out, size_t out_len);

/* Parse + decode in one call, for testing the kernel logic through ctypes. */
TFQ_EXPORT int tfq_codebook_decode_buffer(const uint8_t* options, size_t options_len, const uint8_t* packed,
                                          size_t packed_len, const int8_t* codebook, size_t codebook_len,
                                          int8_t* out, size_t out_len, char* err, size_t err_len);

/* Parse only, for testing the options parser through ctypes: returns 0 and fills A, d, B, bits, K into
 * `values` on success. */
TFQ_EXPORT int tfq_codebook_parse_options_buffer(const uint8_t* options, size_t options_len, int64_t* values,
                                                 char* err, size_t err_len);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* TFQ_CODEBOOK_CORE_H_ */
