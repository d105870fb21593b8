/* Randomized driver of the graph ops' core (tfq_graph_core.c) for the sanitizer build (`make sanitize`):
 * `tfq_graph_fuzz [iterations] [seed]` runs every op on random shapes, scales, zero points and indices, a share
 * of them hostile (ids and gather indices outside their ranges, negative or huge extents, zero or non-finite
 * scales, out-of-range zero points, short buffers), and checks what the header promises: a refused call
 * returns -1 with a message and leaves the output untouched, an accepted one writes every output byte. Any
 * out-of-bounds access or undefined behaviour stops the run under AddressSanitizer / UBSan. Exit 0 on success. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_graph_core.h"

static uint64_t g_state = 88172645463325252ull;
static uint64_t next(void) {
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return g_state;
}
static int64_t range(int64_t lo, int64_t hi) { return lo + (int64_t)(next() % (uint64_t)(hi - lo + 1)); }

int main(int argc, char** argv) {
  long iterations = argc > 1 ? atol(argv[1]) : 20000;
  if (argc > 2) g_state ^= (uint64_t)atoll(argv[2]) * 0x9E3779B97F4A7C15ull;
  long accepted = 0, refused = 0;
  int failed = 0;
  for (long it = 0; it < iterations; ++it) {
    int op = (int)range(0, 3);
    int64_t rows = range(0, 40), inner = range(1, 9), edges = range(0, 120);
    int64_t segments = (op >= TFQ_GRAPH_GCN_AGGREGATE) ? rows : range(0, 50);
    int use_gather = op == TFQ_GRAPH_GCN_AGGREGATE || (op != TFQ_GRAPH_DEGREE_NORM && (next() & 1));
    if (!use_gather && op != TFQ_GRAPH_DEGREE_NORM) edges = rows;
    if (rows == 0) edges = 0;  /* no row to gather or count into */
    double in_scale = ldexp(1.0, (int)range(-20, 4)), out_scale = ldexp(1.0, (int)range(-12, 6));
    int32_t in_zero = (int32_t)range(-128, 127), out_zero = (int32_t)range(-128, 127);
    int hostile = (int)range(0, 9);  /* 0..5: one hostile change; otherwise valid */
    int8_t* data = (int8_t*)malloc((size_t)(rows * inner + 1));
    int32_t* ids = (int32_t*)malloc((size_t)(edges + 1) * sizeof(int32_t));
    int32_t* gather = (int32_t*)malloc((size_t)(edges + 1) * sizeof(int32_t));
    int64_t out_len = segments * inner;
    int8_t* out = (int8_t*)malloc((size_t)(out_len + 1));
    if (!data || !ids || !gather || !out) return 2;
    for (int64_t i = 0; i < rows * inner; ++i) data[i] = (int8_t)range(-128, 127);
    int64_t id_hi = op == TFQ_GRAPH_DEGREE_NORM ? rows : segments;
    for (int64_t e = 0; e < edges; ++e) {
      ids[e] = id_hi > 0 ? (int32_t)range(0, id_hi - 1) : 0;
      gather[e] = rows > 0 ? (int32_t)range(0, rows - 1) : 0;
    }
    if (id_hi == 0 && edges > 0) hostile = hostile > 5 ? 0 : hostile;  /* ids cannot be valid */
    switch (hostile) {
      case 0: if (edges > 0) ids[range(0, edges - 1)] = (int32_t)(next() & 1 ? -1 - range(0, 5) : id_hi + range(0, 5)); break;
      case 1: if (edges > 0 && use_gather) gather[range(0, edges - 1)] = (int32_t)(next() & 1 ? INT32_MIN : rows); break;
      case 2: in_scale = (next() & 1) ? 0.0 : NAN; break;
      case 3: out_zero = (int32_t)(next() & 1 ? 128 : -129); break;
      case 4: segments = -range(1, 3); break;
      case 5: out_len = out_len > 0 ? out_len - 1 : out_len + 1; break;
      default: break;
    }
    memset(out, 0x5A, (size_t)(segments * inner > 0 ? segments * inner : 0) + 1);
    char err[256] = "";
    int rc = tfq_graph_run_buffer(op, data, rows, inner, ids, edges, use_gather ? gather : NULL, segments, in_scale,
                                  in_zero, out_scale, out_zero, out, out_len, err, sizeof(err));
    int64_t written = segments * inner > 0 ? segments * inner : 0;
    if (rc == 0) {
      ++accepted;
      if (hostile <= 5 && !(hostile == 0 && edges == 0) && !(hostile == 1 && (edges == 0 || !use_gather))) {
        fprintf(stderr, "iteration %ld: hostile case %d accepted (op %d)\n", it, hostile, op);
        failed = 1;
      }
    } else {
      ++refused;
      if (err[0] == '\0') {
        fprintf(stderr, "iteration %ld: refused without a message\n", it);
        failed = 1;
      }
      for (int64_t i = 0; i < written; ++i) {
        if (out[i] != 0x5A) {
          fprintf(stderr, "iteration %ld: refused call wrote the output (%s)\n", it, err);
          failed = 1;
          break;
        }
      }
      if (hostile > 5) {
        fprintf(stderr, "iteration %ld: valid call refused: %s\n", it, err);
        failed = 1;
      }
    }
    free(data);
    free(ids);
    free(gather);
    free(out);
    if (failed) return 1;
  }
  printf("tfq_graph_fuzz: %ld accepted, %ld refused\n", accepted, refused);
  return 0;
}
