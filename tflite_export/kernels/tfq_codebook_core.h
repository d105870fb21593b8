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

/* Reads the custom options: a FlexBuffer map with integer entries A, d, B, bits, K. Fills and checks
 * `attrs` (see tfq_codebook_check_attrs). */
int tfq_codebook_parse_options(const uint8_t* buf, size_t len, TfqCodebookAttrs* attrs, char* err,
                               size_t err_len);

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

/* Parse + decode in one call, for testing the kernel logic through ctypes. */
TFQ_EXPORT int tfq_codebook_decode_buffer(const uint8_t* options, size_t options_len, const uint8_t* packed,
                                          size_t packed_len, const int8_t* codebook, size_t codebook_len,
                                          int8_t* out, size_t out_len, char* err, size_t err_len);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* TFQ_CODEBOOK_CORE_H_ */
