/* Integer graph aggregation; see tfq_graph_core.h for the arithmetic and the checks. */
#include "tfq_graph_core.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char* const kOpNames[4] = {TFQ_SEGMENT_SUM_NAME, TFQ_SEGMENT_MEAN_NAME, TFQ_GCN_AGGREGATE_NAME,
                                        TFQ_DEGREE_NORM_NAME};

int tfq_graph_op_from_name(const char* name) {
  if (name == NULL) return -1;
  for (int i = 0; i < 4; ++i) {
    if (strcmp(name, kOpNames[i]) == 0) return i;
  }
  return -1;
}

const char* tfq_graph_op_name(int op) { return op >= 0 && op < 4 ? kOpNames[op] : "TfqGraphOp"; }

int tfq_graph_multiplier(double in_scale, double out_scale, TfqMultiplier* m, char* err, size_t err_len) {
  if (!(in_scale > 0.0) || !isfinite(in_scale) || !(out_scale > 0.0) || !isfinite(out_scale)) {
    return tfq_codebook_fail(err, err_len, "quantization scales must be finite and > 0; got input scale %g, "
                             "output scale %g", in_scale, out_scale);
  }
  double ratio = in_scale / out_scale;
  if (!(ratio <= TFQ_GRAPH_MAX_RATIO)) {
    return tfq_codebook_fail(err, err_len, "input scale / output scale is %g, above the supported %g", ratio,
                             TFQ_GRAPH_MAX_RATIO);
  }
  if (ratio < 1e-30) {  // every output is then the zero point
    m->multiplier = 0;
    m->shift = 0;
    return 0;
  }
  int exponent = 0;
  double mantissa = frexp(ratio, &exponent);  // ratio = mantissa * 2**exponent, mantissa in [0.5, 1)
  int64_t q = (int64_t)llround(mantissa * 2147483648.0);
  if (q == (INT64_C(1) << 31)) {
    q /= 2;
    ++exponent;
  }
  m->multiplier = q;
  m->shift = exponent;
  return 0;
}

static uint64_t isqrt64(uint64_t n) {
  uint64_t root = 0, bit = UINT64_C(1) << 62;
  while (bit > n) bit >>= 2;
  while (bit != 0) {
    if (n >= root + bit) {
      n -= root + bit;
      root = (root >> 1) + bit;
    } else {
      root >>= 1;
    }
    bit >>= 2;
  }
  return root;  // floor(sqrt(n))
}

int64_t tfq_graph_rsqrt_q30(int64_t c) {
  if (c < 1) c = 1;
  if (c > (INT64_C(1) << 23)) c = INT64_C(1) << 23;
  uint64_t root = isqrt64((uint64_t)c << 40);  // floor(sqrt(c) * 2**20), in [2**20, 2**31.5]
  return (int64_t)(((UINT64_C(1) << 50) + root / 2) / root);
}

/* floor(v / 2**s) for 0 <= s <= 62. The right shift of a negative value is implementation-defined in C; every
 * compiler this builds with (gcc, clang) shifts arithmetically, which is floor division, and the branch-free form
 * lets the requantization loops vectorize. tfq_graph_check refuses to run if the compiler does otherwise. */
static int64_t floor_shift(int64_t v, int s) { return v >> s; }

/* floor(a / c) for c > 0. */
static int64_t floor_div(int64_t a, int64_t c) {
  int64_t q = a / c;
  if (a % c != 0 && a < 0) --q;
  return q;
}

static int8_t clamp8(int64_t v) { return (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v)); }

/* q(acc * multiplier * 2**(shift - 31) / divisor): one rounding (half up), then the zero point and clamp.
 * |acc| < 2**31 and multiplier < 2**31, so the product fits in int64. */
static int8_t requantize(int64_t acc, int64_t multiplier, int shift, int64_t divisor, int32_t zero) {
  int total = 31 - shift;  // >= 10 since the ratio is at most 2**20
  if (multiplier == 0 || total > 62) return clamp8(zero);
  int64_t scaled = acc * multiplier;
  if (divisor > 1) scaled = floor_div(scaled, divisor);  // exact: floor(floor(x / c) / 2**t) = floor(x / (c 2**t))
  return clamp8(floor_shift(scaled + (INT64_C(1) << (total - 1)), total) + zero);
}

int64_t tfq_graph_output_elements(const TfqGraphProblem* p) { return p->segments * p->inner; }

int tfq_graph_check(const TfqGraphProblem* p, char* err, size_t err_len) {
  const char* name = tfq_graph_op_name(p->op);
  if (floor_shift(-3, 1) != -2 || floor_shift(INT64_C(-1), 62) != -1) {
    return tfq_codebook_fail(err, err_len, "%s: this build's right shift of negative integers is not arithmetic",
                             name);
  }
  if (p->op < 0 || p->op > 3) return tfq_codebook_fail(err, err_len, "unknown graph op %d", p->op);
  if (p->rows < 0 || p->inner < 1 || p->edges < 0 || p->segments < 0) {
    return tfq_codebook_fail(err, err_len, "%s: negative or empty extent (rows %" PRId64 ", features %" PRId64
                             ", edges %" PRId64 ", segments %" PRId64 ")", name, p->rows, p->inner, p->edges,
                             p->segments);
  }
  if (p->edges > TFQ_GRAPH_MAX_EDGES) {
    return tfq_codebook_fail(err, err_len, "%s: %" PRId64 " edges, more than the %" PRId64 " an int32 sum of int8 "
                             "terms can hold", name, p->edges, (int64_t)TFQ_GRAPH_MAX_EDGES);
  }
  if (p->rows > INT32_MAX / p->inner || p->segments > INT32_MAX / p->inner) {
    return tfq_codebook_fail(err, err_len, "%s: %" PRId64 " or %" PRId64 " rows of %" PRId64 " elements exceed "
                             "2**31 - 1 elements", name, p->rows, p->segments, p->inner);
  }
  if ((p->op == TFQ_GRAPH_GCN_AGGREGATE || p->op == TFQ_GRAPH_DEGREE_NORM) && p->segments != p->rows) {
    return tfq_codebook_fail(err, err_len, "%s: output rows (%" PRId64 ") must equal input rows (%" PRId64 ")",
                             name, p->segments, p->rows);
  }
  if (p->op == TFQ_GRAPH_GCN_AGGREGATE && !p->has_gather) {
    return tfq_codebook_fail(err, err_len, "%s needs the gather (source) indices", name);
  }
  if (p->op != TFQ_GRAPH_DEGREE_NORM && !p->has_gather && p->edges != p->rows) {
    return tfq_codebook_fail(err, err_len, "%s: without gather indices the data needs one row per segment id; "
                             "got %" PRId64 " rows and %" PRId64 " ids", name, p->rows, p->edges);
  }
  if (p->in_zero < -128 || p->in_zero > 127 || p->out_zero < -128 || p->out_zero > 127) {
    return tfq_codebook_fail(err, err_len, "%s: int8 zero points must be in [-128, 127]; got %d and %d", name,
                             (int)p->in_zero, (int)p->out_zero);
  }
  TfqMultiplier m;
  if (tfq_graph_multiplier(p->in_scale, p->out_scale, &m, err, err_len) != 0) return -1;
  return 0;
}

int tfq_graph_run(const TfqGraphProblem* p, const int8_t* data, size_t data_len, const int32_t* ids,
                  size_t ids_len, const int32_t* gather, size_t gather_len, int8_t* out, size_t out_len,
                  int32_t* acc, size_t acc_len, int32_t* counts, size_t counts_len, char* err, size_t err_len) {
  if (tfq_graph_check(p, err, err_len) != 0) return -1;
  const char* name = tfq_graph_op_name(p->op);
  const int64_t M = p->rows, F = p->inner, E = p->edges, S = p->segments;
  const int sums = p->op != TFQ_GRAPH_DEGREE_NORM;
  if ((uint64_t)data_len != (uint64_t)(M * F) || (uint64_t)ids_len != (uint64_t)E ||
      (p->has_gather && (uint64_t)gather_len != (uint64_t)E) || (uint64_t)out_len != (uint64_t)(S * F) ||
      (sums && (uint64_t)acc_len < (uint64_t)(S * F)) || (uint64_t)counts_len < (uint64_t)S) {
    return tfq_codebook_fail(err, err_len, "%s: buffer lengths do not match the shapes", name);
  }
  if ((M * F > 0 && data == NULL) || (E > 0 && ids == NULL) || (p->has_gather && E > 0 && gather == NULL) ||
      (S * F > 0 && out == NULL) || (sums && S * F > 0 && acc == NULL) || (S > 0 && counts == NULL)) {
    return tfq_codebook_fail(err, err_len, "%s: missing buffer", name);
  }
  // Every index first, so that a bad file leaves the output untouched.
  for (int64_t e = 0; e < E; ++e) {
    if (ids[e] < 0 || (int64_t)ids[e] >= S) {
      return tfq_codebook_fail(err, err_len, "%s: segment id %d at position %" PRId64 " is outside [0, %" PRId64
                               ")", name, (int)ids[e], e, S);
    }
    if (p->has_gather && (gather[e] < 0 || (int64_t)gather[e] >= M)) {
      return tfq_codebook_fail(err, err_len, "%s: gather index %d at position %" PRId64 " is outside [0, %" PRId64
                               ")", name, (int)gather[e], e, M);
    }
  }
  TfqMultiplier m;
  tfq_graph_multiplier(p->in_scale, p->out_scale, &m, NULL, 0);
  const int32_t zin = p->in_zero;
  memset(counts, 0, (size_t)S * sizeof(int32_t));
  for (int64_t e = 0; e < E; ++e) ++counts[ids[e]];
  if (p->op == TFQ_GRAPH_DEGREE_NORM) {
    for (int64_t v = 0; v < M; ++v) {
      int64_t mv = (m.multiplier * tfq_graph_rsqrt_q30((int64_t)counts[v] + 1) + (INT64_C(1) << 29)) >> 30;
      const int8_t* row = data + v * F;
      int8_t* dst = out + v * F;
      for (int64_t f = 0; f < F; ++f) dst[f] = requantize((int64_t)row[f] - zin, mv, m.shift, 1, p->out_zero);
    }
    return 0;
  }
  memset(acc, 0, (size_t)(S * F) * sizeof(int32_t));
  for (int64_t e = 0; e < E; ++e) {
    const int8_t* row = data + (p->has_gather ? (int64_t)gather[e] : e) * F;
    int32_t* dst = acc + (int64_t)ids[e] * F;
    for (int64_t f = 0; f < F; ++f) dst[f] += (int32_t)row[f] - zin;
  }
  for (int64_t s = 0; s < S; ++s) {
    int32_t* sum = acc + s * F;
    int8_t* dst = out + s * F;
    if (p->op == TFQ_GRAPH_GCN_AGGREGATE) {
      const int8_t* self = data + s * F;
      int64_t ms = (m.multiplier * tfq_graph_rsqrt_q30((int64_t)counts[s] + 1) + (INT64_C(1) << 29)) >> 30;
      for (int64_t f = 0; f < F; ++f) {
        dst[f] = requantize((int64_t)sum[f] + ((int32_t)self[f] - zin), ms, m.shift, 1, p->out_zero);
      }
    } else {
      int64_t divisor = p->op == TFQ_GRAPH_SEGMENT_MEAN && counts[s] > 1 ? counts[s] : 1;
      for (int64_t f = 0; f < F; ++f) dst[f] = requantize(sum[f], m.multiplier, m.shift, divisor, p->out_zero);
    }
  }
  return 0;
}

int tfq_graph_run_buffer(int op, const int8_t* data, int64_t rows, int64_t inner, const int32_t* ids,
                         int64_t edges, const int32_t* gather, int64_t segments, double in_scale, int32_t in_zero,
                         double out_scale, int32_t out_zero, int8_t* out, int64_t out_len, char* err,
                         size_t err_len) {
  TfqGraphProblem p = {op, rows, inner, edges, segments, gather != NULL, in_zero, out_zero, in_scale, out_scale};
  if (tfq_graph_check(&p, err, err_len) != 0) return -1;
  int64_t n = tfq_graph_output_elements(&p);
  int32_t* acc = (int32_t*)malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
  int32_t* counts = (int32_t*)malloc((size_t)(segments > 0 ? segments : 1) * sizeof(int32_t));
  int rc;
  if (acc == NULL || counts == NULL) {
    rc = tfq_codebook_fail(err, err_len, "out of memory");
  } else {
    rc = tfq_graph_run(&p, data, (size_t)(rows * inner), ids, (size_t)edges, gather, gather ? (size_t)edges : 0,
                       out, out_len < 0 ? 0 : (size_t)out_len, acc, (size_t)n, counts, (size_t)segments, err,
                       err_len);
  }
  free(acc);
  free(counts);
  return rc;
}
