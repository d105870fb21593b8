/* Integer graph aggregation for exported Degree-Quant GNNs: the arithmetic of the TfqSegmentSum,
 * TfqSegmentMean, TfqGcnAggregate and TfqDegreeNorm custom ops, without any TFLite dependency.
 *
 * Every op reads int8 rows `data` (M rows of F elements, scale s_in, zero point z_in) and writes int8 rows
 * (scale s_out, zero point z_out). Sums are exact in int32 (at most TFQ_GRAPH_MAX_EDGES terms of at most
 * 255 in magnitude, plus one self term), and each output element is requantized once, rounding half up as
 * TensorFlow's fake quantization (FakeQuantWithMinMaxVars) does, then clamped to [-128, 127]:
 *
 *   TfqSegmentSum    out[s] = q( sum_{e: ids[e]=s} (data[row(e)] - z_in) )
 *   TfqSegmentMean   out[s] = q( sum_{e: ids[e]=s} (data[row(e)] - z_in) / max(count_s, 1) )
 *   TfqGcnAggregate  out[s] = q( (sum_{e: ids[e]=s} (data[row(e)] - z_in) + (data[s] - z_in)) / sqrt(count_s + 1) )
 *   TfqDegreeNorm    out[v] = q( (data[v] - z_in) / sqrt(count_v + 1) )
 *
 * where q(x) = clamp(floor(x * s_in / s_out + 1/2) + z_out), count_s = #{e : ids[e] = s}, and row(e) =
 * gather[e] when a gather vector is given, else e. s_in / s_out is a fixed-point multiplier (31-bit mantissa,
 * power-of-two exponent, as TFLite's integer kernels use); the mean's division is exact (one rounding); the
 * GCN factor 1/sqrt(c) is a 30-bit fixed-point number computed with an integer square root, folded into a
 * per-row multiplier. No floating-point arithmetic touches the data.
 *
 * Every size and index is checked before use: ids in [0, S), gather in [0, M), E <= TFQ_GRAPH_MAX_EDGES,
 * M*F and S*F below 2**31, and the buffer lengths the caller passes. */
#ifndef TFQ_GRAPH_CORE_H_
#define TFQ_GRAPH_CORE_H_

#include <stddef.h>
#include <stdint.h>

#include "tfq_codebook_core.h" /* TFQ_EXPORT, tfq_codebook_fail, allocation checks */

#ifdef __cplusplus
extern "C" {
#endif

#define TFQ_SEGMENT_SUM_NAME "TfqSegmentSum"
#define TFQ_SEGMENT_MEAN_NAME "TfqSegmentMean"
#define TFQ_GCN_AGGREGATE_NAME "TfqGcnAggregate"
#define TFQ_DEGREE_NORM_NAME "TfqDegreeNorm"

/* Most edges one call accepts: 2**23 - 1, so that 255 * (E + 1) stays below 2**31 (int32 accumulation). */
#define TFQ_GRAPH_MAX_EDGES ((INT64_C(1) << 23) - 1)
/* Largest s_in / s_out accepted (a larger ratio saturates every nonzero input anyway). */
#define TFQ_GRAPH_MAX_RATIO 1048576.0

typedef enum TfqGraphOp {
  TFQ_GRAPH_SEGMENT_SUM = 0,
  TFQ_GRAPH_SEGMENT_MEAN = 1,
  TFQ_GRAPH_GCN_AGGREGATE = 2,
  TFQ_GRAPH_DEGREE_NORM = 3,
} TfqGraphOp;

/* real multiplier = multiplier * 2**(shift - 31), multiplier in [2**30, 2**31) (0 for a zero ratio). */
typedef struct TfqMultiplier {
  int64_t multiplier;
  int shift;
} TfqMultiplier;

typedef struct TfqGraphProblem {
  int op;          /* TfqGraphOp */
  int64_t rows;    /* M: rows of data */
  int64_t inner;   /* F: elements per row (product of the data dims after the first; >= 1) */
  int64_t edges;   /* E: entries of ids (and of gather) */
  int64_t segments;/* S: output rows (DegreeNorm and GcnAggregate: must equal M) */
  int has_gather;  /* row(e) = gather[e]; else row(e) = e and E must equal M (GcnAggregate: required) */
  int32_t in_zero, out_zero;
  double in_scale, out_scale;
} TfqGraphProblem;

/* The op for a custom-op name (one of the four above), or -1. */
int tfq_graph_op_from_name(const char* name);
const char* tfq_graph_op_name(int op);

/* s_in / s_out as a fixed-point multiplier; fails unless both scales are finite and > 0 and the ratio is at
 * most TFQ_GRAPH_MAX_RATIO. */
int tfq_graph_multiplier(double in_scale, double out_scale, TfqMultiplier* m, char* err, size_t err_len);

/* floor(2**30 / sqrt(c) + 1/2) for 1 <= c <= 2**23, by integer square root. */
int64_t tfq_graph_rsqrt_q30(int64_t c);

/* Checks the problem's sizes, zero points and scales (not the index values: tfq_graph_run does). */
int tfq_graph_check(const TfqGraphProblem* p, char* err, size_t err_len);

/* Output elements: S * F. Scratch the run needs: `acc` of S * F int32 (sum ops) and `counts` of S int32. */
int64_t tfq_graph_output_elements(const TfqGraphProblem* p);

/* Runs one op. Buffer lengths are element counts: data_len = M*F, ids_len = gather_len = E, out_len = S*F,
 * acc_len >= S*F (unused by DegreeNorm), counts_len >= S. Fails, naming the position and value, on the first
 * id outside [0, S) or gather index outside [0, M); the output is then not written. */
int tfq_graph_run(const TfqGraphProblem* p, const int8_t* data, size_t data_len, const int32_t* ids,
                  size_t ids_len, const int32_t* gather, size_t gather_len, int8_t* out, size_t out_len,
                  int32_t* acc, size_t acc_len, int32_t* counts, size_t counts_len, char* err, size_t err_len);

/* tfq_graph_run with its own scratch, for testing through ctypes. `gather` may be NULL (has_gather = 0). */
TFQ_EXPORT int tfq_graph_run_buffer(int op, const int8_t* data, int64_t rows, int64_t inner, const int32_t* ids,
                                    int64_t edges, const int32_t* gather, int64_t segments, double in_scale,
                                    int32_t in_zero, double out_scale, int32_t out_zero, int8_t* out,
                                    int64_t out_len, char* err, size_t err_len);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* TFQ_GRAPH_CORE_H_ */
