/* tfq_loader: turns a loader-layout compressed TFLite file into the dense model (see FORMAT.md).
 *
 * A loader-layout file S holds the dense int8 flatbuffer with every compressed weight's Buffer emptied and
 * pointed past the end of the flatbuffer (Buffer.offset / Buffer.size), plus a `tfq_codebook` metadata entry
 * describing how to rebuild each weight. The dense model is
 *
 *     D = S || zero padding || weight 0 || zero padding || weight 1 || ...
 *
 * which any TFLite / LiteRT runtime with external-buffer support loads at dense speed (the buffer D must
 * outlive the model created from it). Returned as an unchanged copy: a file without the metadata entry and
 * without a TfqCodebookDecode operator code, and a loaded model (its length equals the descriptor's
 * dense_size). A kernel-layout file (one with that custom operator code) is an error here: decode it with
 * Python's `tflite_export.decompress`, or compress with layout="loader".
 *
 * Plain C11 and libc only. Every byte of the input is treated as hostile: every offset, length and index is
 * checked before use, no function reads or writes out of bounds, and every loop is bounded by validated sizes.
 * The input is never written. All functions return 0 on success, or -1 with a NUL-terminated message naming
 * the entry or buffer at fault in `err` (when `err` is not NULL and `err_len` > 0). TFQ_LOADER_ERR_LEN bytes
 * hold any message.
 */
#ifndef TFQ_LOADER_H_
#define TFQ_LOADER_H_

#include <stddef.h>
#include <stdint.h>

#include "tfq_codebook_core.h" /* TFQ_EXPORT */

#ifdef __cplusplus
extern "C" {
#endif

#define TFQ_LOADER_METADATA_NAME "tfq_codebook"
#define TFQ_LOADER_MAGIC "TFQCBLD1"
#define TFQ_LOADER_ERR_LEN 256

/* The default bound on the dense size for an input of `len` bytes: max(16 MiB, 256 * len), saturating at
 * SIZE_MAX. A real model stays far below it; a decompression bomb does not. */
TFQ_EXPORT size_t tfq_default_max_bytes(size_t len);

/* Validates `data` (every check of FORMAT.md except the index / code ranges, which decoding checks) and
 * stores the size of the dense model in `*out_len`. `max_bytes` bounds the size of a decoded model (a file
 * returned unchanged is not decoded, so not bounded); 0 selects tfq_default_max_bytes(len). */
TFQ_EXPORT int tfq_decompressed_size(const uint8_t* data, size_t len, size_t max_bytes, size_t* out_len,
                                     char* err, size_t err_len);

/* Writes the dense model into `out` (`out_cap` bytes, which must not overlap `data`) and its size into
 * `*out_len`. Fails without writing when `out_cap` is too small (tfq_decompressed_size gives the size).
 * After a failure during decoding (an index or code out of range), `out` holds an incomplete model. */
TFQ_EXPORT int tfq_decompress_into(const uint8_t* data, size_t len, size_t max_bytes, uint8_t* out,
                                   size_t out_cap, size_t* out_len, char* err, size_t err_len);

/* Like tfq_decompress_into, into a buffer allocated here: `*out` is malloc'd (free it with tfq_free) and
 * holds `*out_len` bytes. On failure `*out` is NULL and `*out_len` 0. The size is checked against
 * `max_bytes` before anything is allocated. */
TFQ_EXPORT int tfq_decompress(const uint8_t* data, size_t len, size_t max_bytes, uint8_t** out,
                              size_t* out_len, char* err, size_t err_len);

/* Frees a buffer returned by tfq_decompress (NULL is allowed). */
TFQ_EXPORT void tfq_free(void* p);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* TFQ_LOADER_H_ */
