/* TfqSegmentSum, TfqSegmentMean, TfqGcnAggregate and TfqDegreeNorm for the TFLite / LiteRT C API
 * (TfLiteOperator), e.g. in an Android app. The same ops, checks and messages as tfq_graph_ops_tflite.cc (the C++
 * registration); the arithmetic and its index checks are in tfq_graph_core.c.
 *
 * Usage with the C API, once per op name:
 *     TfLiteInterpreterOptionsAddOperator(options, TfqGraphOpOperator("TfqSegmentSum"));
 *     ... "TfqSegmentMean", "TfqGcnAggregate", "TfqDegreeNorm"
 * TfqGraphOpOperator returns NULL for any other name (and when the runtime cannot create the operator). Each
 * operator is created once and lives for the process (the C API requires it to outlive every interpreter that
 * uses it). The first call per name is thread-safe where C11 atomics exist (__STDC_NO_ATOMICS__ undefined): two
 * threads racing on the first call get the same operator, the loser deletes its own copy with
 * TfLiteOperatorDelete. Without C11 atomics, call it once per name before creating interpreters on several
 * threads.
 *
 * Node inputs (int8 tensors per-tensor affine quantized, index tensors int32):
 *   TfqSegmentSum / TfqSegmentMean: data [M, ...], segment_ids [E], num_segments [] or [1], optional gather [E]
 *                                   (absent, or index -1: row e of data feeds edge e, and M must equal E)
 *   TfqGcnAggregate:                data [N, ...], segment_ids [E], num_segments (= N), gather [E]
 *   TfqDegreeNorm:                  data [N, ...], segment_ids [E]
 * Output: int8 [num_segments, ...] (TfqDegreeNorm: data's shape). When num_segments is a constant (allocation
 * type kTfLiteMmapRo or kTfLitePersistentRo, with data) the output is sized in Prepare with
 * TfLiteOpaqueContextResizeTensor; otherwise Prepare makes it dynamic (TfLiteOpaqueTensorSetAllocationTypeToDynamic)
 * and Invoke sizes it. The ops take no custom options.
 *
 * Quantization is read with TfLiteOpaqueTensorGetQuantization (its type must be kTfLiteAffineQuantization) and
 * TfLiteOpaqueTensorGetQuantizationParams (the per-tensor scale and zero point). The runtime fills the latter only
 * for a tensor with exactly one scale and one zero point; a per-channel tensor reads as scale 0 and is refused.
 *
 * Prepare refuses an output the runtime does not let an op write (model memory, a variable, a buffer the caller
 * supplied: tfq_codebook_check_output_allocation), an output that is also an input, and anything outside
 * tfq_graph_check's limits. The C++ registration also refuses an output whose `allocation` (model memory) is set;
 * the opaque API has no accessor for it, and the allocation type check covers the same case. Invoke checks every
 * segment id and gather index before writing (tfq_graph_run). Every error is reported through
 * TfLiteOpaqueContextReportError and returns kTfLiteError.
 *
 * Only the stable opaque API is used; the declarations below are written by hand from tensorflow/lite/core/c
 * (c_api_opaque.h, operator.h, common.h), checked against the current LiteRT headers (tflite/core/c), so this file
 * needs no TFLite header. TfLiteOperatorCreate: by default the three-argument form (TF 2.16 - 2.18, like
 * tfq_codebook_decode_c_api.c); define TFQ_OPERATOR_CREATE_WITH_DATA to call TfLiteOperatorCreateWithData(...,
 * NULL) (releases that had both), or TFQ_OPERATOR_CREATE_USER_DATA for releases whose TfLiteOperatorCreate itself
 * takes the user_data argument (current LiteRT).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_codebook_core.h"
#include "tfq_graph_core.h"

#if !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
#endif

#include "tfq_c_api.h"

enum { kTfqAffineQuantization = 1 };
enum { kTfqOptionalTensor = -1 };

typedef struct OpData {
  int op;              /* TfqGraphOp */
  size_t options_length;
  int prepared;        /* 1 after a Prepare whose checks all passed */
  int32_t* acc;        /* scratch of tfq_graph_run, grown as needed, freed in Free */
  size_t acc_capacity;
  int32_t* counts;
  size_t counts_capacity;
} OpData;

static void* InitOp(int op, size_t length) {
  OpData* data = (OpData*)calloc(1, sizeof(OpData));
  if (data == NULL) return NULL;
  data->op = op;
  data->options_length = length;
  return data;
}

static void* InitSegmentSum(TfLiteOpaqueContext* context, const char* buffer, size_t length) {
  (void)context;
  (void)buffer;
  return InitOp(TFQ_GRAPH_SEGMENT_SUM, length);
}
static void* InitSegmentMean(TfLiteOpaqueContext* context, const char* buffer, size_t length) {
  (void)context;
  (void)buffer;
  return InitOp(TFQ_GRAPH_SEGMENT_MEAN, length);
}
static void* InitGcnAggregate(TfLiteOpaqueContext* context, const char* buffer, size_t length) {
  (void)context;
  (void)buffer;
  return InitOp(TFQ_GRAPH_GCN_AGGREGATE, length);
}
static void* InitDegreeNorm(TfLiteOpaqueContext* context, const char* buffer, size_t length) {
  (void)context;
  (void)buffer;
  return InitOp(TFQ_GRAPH_DEGREE_NORM, length);
}

static void Free(TfLiteOpaqueContext* context, void* buffer) {
  (void)context;
  OpData* data = (OpData*)buffer;
  if (data != NULL) {
    free(data->acc);
    free(data->counts);
  }
  free(buffer);
}

static TfLiteStatusValue Fail(TfLiteOpaqueContext* context, int op, const char* message) {
  TfLiteOpaqueContextReportError(context, "%s: %s", tfq_graph_op_name(op), message);
  return kTfqStatusError;
}

/* A message of tfq_graph_core, which names the op itself. */
static TfLiteStatusValue FailCore(TfLiteOpaqueContext* context, const char* message) {
  TfLiteOpaqueContextReportError(context, "%s", message);
  return kTfqStatusError;
}

/* Elements of a tensor's shape, or -1 when the shape is unset, has a negative extent or exceeds 2**31 - 1. */
static int64_t Elements(const TfLiteOpaqueTensor* t) {
  int32_t rank = TfLiteOpaqueTensorNumDims(t);
  if (rank < 0) return -1;
  int64_t n = 1;
  for (int32_t i = 0; i < rank; ++i) {
    int32_t d = TfLiteOpaqueTensorDim(t, i);
    if (d < 0) return -1;
    n *= d;
    if (n > INT32_MAX) return -1;
  }
  return n;
}

/* Per-tensor affine int8 quantization: the scale and zero point, or 0. */
static int Quant(const TfLiteOpaqueTensor* t, double* scale, int32_t* zero) {
  if (TfLiteOpaqueTensorType(t) != kTfqTypeInt8) return 0;
  if (TfLiteOpaqueTensorGetQuantization(t).type != kTfqAffineQuantization) return 0;
  TfLiteQuantizationParams params = TfLiteOpaqueTensorGetQuantizationParams(t);
  /* The runtime leaves these at 0 unless the tensor has exactly one scale and one zero point. */
  if (!(params.scale > 0.0f)) return 0;
  *scale = params.scale;
  *zero = params.zero_point;
  return 1;
}

static int IsInt32Vector(const TfLiteOpaqueTensor* t) {
  return TfLiteOpaqueTensorType(t) == kTfqTypeInt32 && TfLiteOpaqueTensorNumDims(t) == 1;
}

typedef struct Tensors {
  const TfLiteOpaqueTensor* data;
  const TfLiteOpaqueTensor* ids;
  const TfLiteOpaqueTensor* num_segments; /* NULL for TfqDegreeNorm */
  const TfLiteOpaqueTensor* gather;       /* NULL when absent */
  TfLiteOpaqueTensor* output;
  TfqGraphProblem problem;                /* segments filled by Segments() */
} Tensors;

/* Input `slot` of the node: NULL when the slot is absent or optional (-1); `*bad` set when the runtime gives no
 * tensor for an index that is neither. */
static const TfLiteOpaqueTensor* Input(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node, const int* inputs,
                                       int num_inputs, int slot, int* bad) {
  if (slot >= num_inputs || inputs[slot] == kTfqOptionalTensor) return NULL;
  const TfLiteOpaqueTensor* t = TfLiteOpaqueNodeGetInput(context, node, slot);
  if (t == NULL) *bad = 1;
  return t;
}

static TfLiteStatusValue Gather(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node, OpData** out_data,
                                Tensors* t) {
  OpData* data = (OpData*)TfLiteOpaqueNodeGetUserData(node);
  if (data == NULL) return Fail(context, -1, "out of memory in Init");
  const int op = data->op;
  if (data->options_length != 0) return Fail(context, op, "the op takes no custom options");
  const int min_inputs = op == TFQ_GRAPH_DEGREE_NORM ? 2 : (op == TFQ_GRAPH_GCN_AGGREGATE ? 4 : 3);
  const int max_inputs = op == TFQ_GRAPH_DEGREE_NORM ? 2 : 4;
  const int *inputs = NULL, *outputs = NULL;
  int num_inputs = 0, num_outputs = 0;
  if (TfLiteOpaqueNodeInputs(node, &inputs, &num_inputs) != kTfqStatusOk ||
      TfLiteOpaqueNodeOutputs(node, &outputs, &num_outputs) != kTfqStatusOk || inputs == NULL || outputs == NULL ||
      num_inputs < min_inputs || num_inputs > max_inputs || num_outputs != 1) {
    char message[160];
    snprintf(message, sizeof(message), "expected %d to %d inputs and 1 output", min_inputs, max_inputs);
    return Fail(context, op, message);
  }
  int bad = 0;
  t->data = Input(context, node, inputs, num_inputs, 0, &bad);
  t->ids = Input(context, node, inputs, num_inputs, 1, &bad);
  t->num_segments = op == TFQ_GRAPH_DEGREE_NORM ? NULL : Input(context, node, inputs, num_inputs, 2, &bad);
  t->gather = op == TFQ_GRAPH_DEGREE_NORM ? NULL : Input(context, node, inputs, num_inputs, 3, &bad);
  const int out_index = outputs[0];
  t->output = out_index < 0 ? NULL : TfLiteOpaqueNodeGetOutput(context, node, 0);
  if (bad || t->data == NULL || t->ids == NULL || t->output == NULL ||
      (op != TFQ_GRAPH_DEGREE_NORM && t->num_segments == NULL) ||
      (op == TFQ_GRAPH_GCN_AGGREGATE && t->gather == NULL)) {
    return Fail(context, op, "an input or output tensor index is invalid or missing");
  }
  for (int i = 0; i < num_inputs; ++i) {
    if (inputs[i] == out_index) return Fail(context, op, "the output is also an input of the node");
  }
  TfqGraphProblem* p = &t->problem;
  memset(p, 0, sizeof(*p));
  p->op = op;
  if (!Quant(t->data, &p->in_scale, &p->in_zero) || !Quant(t->output, &p->out_scale, &p->out_zero)) {
    return Fail(context, op, "data and output must be int8 tensors with one (per-tensor) scale and zero point");
  }
  if (!IsInt32Vector(t->ids) || (t->gather != NULL && !IsInt32Vector(t->gather)) ||
      (t->num_segments != NULL &&
       (TfLiteOpaqueTensorType(t->num_segments) != kTfqTypeInt32 || Elements(t->num_segments) != 1))) {
    return Fail(context, op, "segment ids and gather indices must be int32 vectors and num_segments one int32");
  }
  const int32_t rank = TfLiteOpaqueTensorNumDims(t->data);
  if (rank < 1) return Fail(context, op, "data must have at least one dimension (its rows)");
  const int64_t data_elements = Elements(t->data);
  if (data_elements < 0) return Fail(context, op, "data has a negative or too large shape");
  const int64_t edges = Elements(t->ids);
  if (edges < 0 || (t->gather != NULL && Elements(t->gather) < 0)) {
    return Fail(context, op, "segment ids or gather indices have a negative or too large shape");
  }
  p->rows = TfLiteOpaqueTensorDim(t->data, 0);
  p->inner = 1;
  for (int32_t i = 1; i < rank && p->inner >= 1; ++i) {
    p->inner *= TfLiteOpaqueTensorDim(t->data, i); /* each extent is in [0, 2**31), checked by Elements */
    if (p->inner > INT32_MAX) return Fail(context, op, "data has a negative or too large shape");
  }
  if (p->inner < 1) return Fail(context, op, "data rows must not be empty");
  p->edges = edges;
  if (t->gather != NULL && Elements(t->gather) != p->edges) {
    return Fail(context, op, "gather indices and segment ids must have the same length");
  }
  p->has_gather = t->gather != NULL;
  if ((uint64_t)TfLiteOpaqueTensorByteSize(t->data) != (uint64_t)data_elements ||
      (uint64_t)TfLiteOpaqueTensorByteSize(t->ids) != (uint64_t)p->edges * sizeof(int32_t) ||
      (t->gather != NULL &&
       (uint64_t)TfLiteOpaqueTensorByteSize(t->gather) != (uint64_t)p->edges * sizeof(int32_t))) {
    return Fail(context, op, "a tensor's byte size does not match its shape");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_check_output_allocation(TfLiteOpaqueTensorGetAllocationType(t->output),
                                           TfLiteOpaqueTensorIsVariable(t->output), error, sizeof(error)) != 0) {
    return Fail(context, op, error);
  }
  *out_data = data;
  return kTfqStatusOk;
}

static int KnownInPrepare(const TfLiteOpaqueTensor* t) {
  int allocation = TfLiteOpaqueTensorGetAllocationType(t);
  return (allocation == TFQ_ALLOC_MMAP_RO || allocation == TFQ_ALLOC_PERSISTENT_RO) &&
         TfLiteOpaqueTensorData(t) != NULL;
}

static TfLiteStatusValue Segments(TfLiteOpaqueContext* context, Tensors* t) {
  TfqGraphProblem* p = &t->problem;
  if (t->num_segments == NULL) {
    p->segments = p->rows;
  } else {
    const void* value_data = TfLiteOpaqueTensorData(t->num_segments);
    if (value_data == NULL || TfLiteOpaqueTensorByteSize(t->num_segments) != sizeof(int32_t)) {
      return Fail(context, p->op, "num_segments has no value");
    }
    int32_t value;
    memcpy(&value, value_data, sizeof(value));
    if (value < 0) {
      char message[96];
      snprintf(message, sizeof(message), "num_segments must be >= 0; got %d", (int)value);
      return Fail(context, p->op, message);
    }
    p->segments = value;
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_graph_check(p, error, sizeof(error)) != 0) return FailCore(context, error);
  return kTfqStatusOk;
}

/* Output shape [segments, data dims after the first]; resized unless it has that shape and memory already (a
 * tensor just made dynamic has none until it is resized, whatever its shape). */
static TfLiteStatusValue ResizeOutput(TfLiteOpaqueContext* context, Tensors* t) {
  const int32_t rank = TfLiteOpaqueTensorNumDims(t->data); /* >= 1, checked by Gather */
  int same = TfLiteOpaqueTensorData(t->output) != NULL && TfLiteOpaqueTensorNumDims(t->output) == rank &&
             (int64_t)TfLiteOpaqueTensorDim(t->output, 0) == t->problem.segments;
  for (int32_t i = 1; same && i < rank; ++i) {
    same = TfLiteOpaqueTensorDim(t->output, i) == TfLiteOpaqueTensorDim(t->data, i);
  }
  if (same) return kTfqStatusOk;
  TfLiteIntArray* shape = TfLiteIntArrayCreate(rank);
  if (shape == NULL) return Fail(context, t->problem.op, "out of memory");
  shape->data[0] = (int)t->problem.segments; /* < 2**31 by tfq_graph_check */
  for (int32_t i = 1; i < rank; ++i) shape->data[i] = TfLiteOpaqueTensorDim(t->data, i);
  /* The runtime takes ownership of `shape`, even on failure. */
  if (TfLiteOpaqueContextResizeTensor(context, t->output, shape) != kTfqStatusOk) {
    return Fail(context, t->problem.op, "could not resize the output tensor");
  }
  return kTfqStatusOk;
}

static TfLiteStatusValue Prepare(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node) {
  OpData* data;
  Tensors t;
  OpData* user = (OpData*)TfLiteOpaqueNodeGetUserData(node);
  if (user != NULL) user->prepared = 0;
  if (Gather(context, node, &data, &t) != kTfqStatusOk) return kTfqStatusError;
  if (t.num_segments == NULL || KnownInPrepare(t.num_segments)) {
    if (Segments(context, &t) != kTfqStatusOk || ResizeOutput(context, &t) != kTfqStatusOk) return kTfqStatusError;
  } else {
    TfLiteOpaqueTensorSetAllocationTypeToDynamic(t.output); /* sized in Invoke, as UNSORTED_SEGMENT_SUM does */
  }
  data->prepared = 1;
  return kTfqStatusOk;
}

static int Reserve(int32_t** buffer, size_t* capacity, size_t elements) {
  if (elements <= *capacity && *buffer != NULL) return 1;
  size_t n = elements > 0 ? elements : 1;
  if (n > SIZE_MAX / sizeof(int32_t)) return 0;
  int32_t* grown = (int32_t*)realloc(*buffer, n * sizeof(int32_t));
  if (grown == NULL) return 0;
  *buffer = grown;
  *capacity = n;
  return 1;
}

static TfLiteStatusValue Invoke(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node) {
  OpData* data;
  Tensors t;
  if (Gather(context, node, &data, &t) != kTfqStatusOk) return kTfqStatusError;
  if (!data->prepared) return Fail(context, data->op, "Invoke before a successful Prepare");
  if (Segments(context, &t) != kTfqStatusOk) return kTfqStatusError;
  if (TfLiteOpaqueTensorGetAllocationType(t.output) == TFQ_ALLOC_DYNAMIC &&
      ResizeOutput(context, &t) != kTfqStatusOk) {
    return kTfqStatusError;
  }
  const TfqGraphProblem* p = &t.problem;
  const int64_t out_elements = tfq_graph_output_elements(p);
  void* out = TfLiteOpaqueTensorData(t.output);
  const size_t out_bytes = TfLiteOpaqueTensorByteSize(t.output);
  if (Elements(t.output) != out_elements || (uint64_t)out_bytes != (uint64_t)out_elements ||
      (out_elements > 0 && out == NULL)) {
    return Fail(context, p->op, "the output tensor does not have num_segments rows of the data's row shape");
  }
  const size_t acc_elements = p->op == TFQ_GRAPH_DEGREE_NORM ? 0 : (size_t)out_elements;
  if (!Reserve(&data->acc, &data->acc_capacity, acc_elements) ||
      !Reserve(&data->counts, &data->counts_capacity, (size_t)p->segments)) {
    return Fail(context, p->op, "out of memory for the accumulators");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_graph_run(p, (const int8_t*)TfLiteOpaqueTensorData(t.data), TfLiteOpaqueTensorByteSize(t.data),
                    (const int32_t*)TfLiteOpaqueTensorData(t.ids), (size_t)p->edges,
                    t.gather != NULL ? (const int32_t*)TfLiteOpaqueTensorData(t.gather) : NULL,
                    t.gather != NULL ? (size_t)p->edges : 0, (int8_t*)out, out_bytes, data->acc, data->acc_capacity,
                    data->counts, data->counts_capacity, error, sizeof(error)) != 0) {
    return FailCore(context, error);
  }
  return kTfqStatusOk;
}

static TfLiteOperator* Create(int op) {
  static void* (*const kInits[4])(TfLiteOpaqueContext*, const char*, size_t) = {
      InitSegmentSum, InitSegmentMean, InitGcnAggregate, InitDegreeNorm};
  const char* name = tfq_graph_op_name(op); /* a string literal: lives for the process */
  TfLiteOperator* created = TFQ_OPERATOR_CREATE(kTfqBuiltinCustom, name, 1);
  if (created == NULL) return NULL;
  TfLiteOperatorSetInit(created, kInits[op]);
  TfLiteOperatorSetFree(created, Free);
  TfLiteOperatorSetPrepare(created, Prepare);
  TfLiteOperatorSetInvoke(created, Invoke);
  return created;
}

#if !defined(__STDC_NO_ATOMICS__)
static _Atomic(TfLiteOperator*) g_operators[4];
#else
static TfLiteOperator* g_operators[4];
#endif

TFQ_EXPORT TfLiteOperator* TfqGraphOpOperator(const char* name) {
  const int op = tfq_graph_op_from_name(name);
  if (op < 0 || op > 3) return NULL;
#if !defined(__STDC_NO_ATOMICS__)
  TfLiteOperator* existing = atomic_load_explicit(&g_operators[op], memory_order_acquire);
  if (existing != NULL) return existing;
  TfLiteOperator* created = Create(op);
  if (created == NULL) return NULL;
  TfLiteOperator* expected = NULL;
  if (atomic_compare_exchange_strong_explicit(&g_operators[op], &expected, created, memory_order_acq_rel,
                                              memory_order_acquire)) {
    return created;
  }
  TfLiteOperatorDelete(created); /* another thread won the race; nobody has seen this copy */
  return expected;
#else
  if (g_operators[op] == NULL) g_operators[op] = Create(op);
  return g_operators[op];
#endif
}
