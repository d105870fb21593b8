// TfqSegmentSum, TfqSegmentMean, TfqGcnAggregate and TfqDegreeNorm for the TFLite C++ interpreter
// (TensorFlow's `InterpreterWithCustomOps` in Python). The arithmetic and its checks are in tfq_graph_core.c;
// this file reads the node's tensors, checks their types, shapes and quantization, sizes the output and runs
// the core. The runtime structs are declared by hand in tfq_tflite_abi.h.
//
// Node inputs (int8 tensors per-tensor affine quantized, index tensors int32):
//   TfqSegmentSum / TfqSegmentMean: data [M, ...], segment_ids [E], num_segments [] or [1], optional gather [E]
//                                   (absent, or index -1: row e of data feeds edge e, and M must equal E)
//   TfqGcnAggregate:                data [N, ...], segment_ids [E], num_segments (= N), gather [E]
//   TfqDegreeNorm:                  data [N, ...], segment_ids [E]
// Output: int8 [num_segments, ...] (TfqDegreeNorm: data's shape). When num_segments is a constant (or a
// tensor TFLite fills during Prepare) the output is sized in Prepare; otherwise it is made dynamic and sized in
// Eval, as TFLite's own UNSORTED_SEGMENT_SUM does. The ops take no custom options.
//
// Prepare refuses an output the runtime does not let an op write (model memory, a variable, a buffer the
// caller supplied), an output that is also an input, and anything outside tfq_graph_check's limits. Eval
// checks every segment id and gather index before writing (tfq_graph_run). Errors go through
// context->ReportError and return kTfLiteError.
//
// Entry point: TfqGraphOpsRegister(resolver), a registerer for
// InterpreterWithCustomOps(custom_op_registerers=["TfqGraphOpsRegister"]); the library must be loaded with
// RTLD_GLOBAL first.
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_codebook_core.h"
#include "tfq_graph_core.h"
#include "tfq_tflite_abi.h"

namespace {

enum { kTfLitePersistentRo = 5, kTfLiteOptionalTensor = -1 };

struct OpData {
  int op;
  int options_length;
  int prepared;
  int32_t* acc;
  size_t acc_capacity;
  int32_t* counts;
  size_t counts_capacity;
};

template <int kOp>
void* Init(TfLiteContext*, const char*, size_t length) {
  OpData* data = static_cast<OpData*>(calloc(1, sizeof(OpData)));
  if (data == nullptr) return nullptr;
  data->op = kOp;
  data->options_length = length > 0x7fffffff ? 0x7fffffff : static_cast<int>(length);
  return data;
}

void Free(TfLiteContext*, void* buffer) {
  OpData* data = static_cast<OpData*>(buffer);
  if (data != nullptr) {
    free(data->acc);
    free(data->counts);
  }
  free(buffer);
}

TfLiteStatus Fail(TfLiteContext* context, int op, const char* message) {
  context->ReportError(context, "%s: %s", tfq_graph_op_name(op), message);
  return kTfLiteError;
}

// A message of tfq_graph_core, which names the op itself.
TfLiteStatus FailCore(TfLiteContext* context, const char* message) {
  context->ReportError(context, "%s", message);
  return kTfLiteError;
}

// Input `slot` of the node: nullptr when the slot is absent or optional (-1); `bad` when the index is invalid.
TfLiteTensor* Input(TfLiteContext* context, const TfLiteNode* node, int slot, bool* bad) {
  if (slot >= node->inputs->size) return nullptr;
  int index = node->inputs->data[slot];
  if (index == kTfLiteOptionalTensor) return nullptr;
  if (index < 0 || static_cast<size_t>(index) >= context->tensors_size) {
    *bad = true;
    return nullptr;
  }
  return &context->tensors[index];
}

int Dims(const TfLiteTensor* t) { return t->dims == nullptr ? -1 : t->dims->size; }

int64_t Elements(const TfLiteTensor* t) {
  if (t->dims == nullptr) return -1;
  int64_t n = 1;
  for (int i = 0; i < t->dims->size; ++i) {
    if (t->dims->data[i] < 0) return -1;
    n *= t->dims->data[i];
    if (n > INT32_MAX) return -1;
  }
  return n;
}

// Per-tensor affine int8 quantization: the scale and zero point, or false.
bool Quant(const TfLiteTensor* t, double* scale, int32_t* zero) {
  if (t->type != kTfLiteInt8 || t->quantization.type != kTfLiteAffineQuantization) return false;
  const TfLiteAffineQuantization* q = static_cast<const TfLiteAffineQuantization*>(t->quantization.params);
  if (q == nullptr || q->scale == nullptr || q->scale->size != 1) return false;
  if (q->zero_point != nullptr && q->zero_point->size != 1) return false;
  *scale = q->scale->data[0];
  *zero = q->zero_point == nullptr ? 0 : q->zero_point->data[0];
  return true;
}

struct Tensors {
  TfLiteTensor* data;
  TfLiteTensor* ids;
  TfLiteTensor* num_segments;  // nullptr for TfqDegreeNorm
  TfLiteTensor* gather;        // nullptr when absent
  TfLiteTensor* output;
  TfqGraphProblem problem;     // segments filled by Segments()
};

TfLiteStatus Gather(TfLiteContext* context, TfLiteNode* node, OpData** out_data, Tensors* t) {
  OpData* data = static_cast<OpData*>(node->user_data);
  if (data == nullptr) return Fail(context, -1, "out of memory in Init");
  const int op = data->op;
  if (data->options_length != 0) return Fail(context, op, "the op takes no custom options");
  const int min_inputs = op == TFQ_GRAPH_DEGREE_NORM ? 2 : (op == TFQ_GRAPH_GCN_AGGREGATE ? 4 : 3);
  const int max_inputs = op == TFQ_GRAPH_DEGREE_NORM ? 2 : 4;
  if (node->inputs == nullptr || node->outputs == nullptr || node->inputs->size < min_inputs ||
      node->inputs->size > max_inputs || node->outputs->size != 1) {
    char message[160];
    snprintf(message, sizeof(message), "expected %d to %d inputs and 1 output", min_inputs, max_inputs);
    return Fail(context, op, message);
  }
  bool bad = false;
  t->data = Input(context, node, 0, &bad);
  t->ids = Input(context, node, 1, &bad);
  t->num_segments = op == TFQ_GRAPH_DEGREE_NORM ? nullptr : Input(context, node, 2, &bad);
  t->gather = op == TFQ_GRAPH_DEGREE_NORM ? nullptr : Input(context, node, 3, &bad);
  int out_index = node->outputs->data[0];
  t->output = out_index >= 0 && static_cast<size_t>(out_index) < context->tensors_size
                  ? &context->tensors[out_index] : nullptr;
  if (bad || t->data == nullptr || t->ids == nullptr || t->output == nullptr ||
      (op != TFQ_GRAPH_DEGREE_NORM && t->num_segments == nullptr) ||
      (op == TFQ_GRAPH_GCN_AGGREGATE && t->gather == nullptr)) {
    return Fail(context, op, "an input or output tensor index is invalid or missing");
  }
  for (int i = 0; i < node->inputs->size; ++i) {
    if (node->inputs->data[i] == out_index) return Fail(context, op, "the output is also an input of the node");
  }
  TfqGraphProblem* p = &t->problem;
  memset(p, 0, sizeof(*p));
  p->op = op;
  if (!Quant(t->data, &p->in_scale, &p->in_zero) || !Quant(t->output, &p->out_scale, &p->out_zero)) {
    return Fail(context, op, "data and output must be int8 tensors with one (per-tensor) scale and zero point");
  }
  if (t->ids->type != kTfLiteInt32 || Dims(t->ids) != 1 ||
      (t->gather != nullptr && (t->gather->type != kTfLiteInt32 || Dims(t->gather) != 1)) ||
      (t->num_segments != nullptr && (t->num_segments->type != kTfLiteInt32 || Elements(t->num_segments) != 1))) {
    return Fail(context, op, "segment ids and gather indices must be int32 vectors and num_segments one int32");
  }
  if (Dims(t->data) < 1) return Fail(context, op, "data must have at least one dimension (its rows)");
  int64_t data_elements = Elements(t->data);
  if (data_elements < 0) return Fail(context, op, "data has a negative or too large shape");
  p->rows = t->data->dims->data[0];
  p->inner = 1;
  for (int i = 1; i < t->data->dims->size; ++i) p->inner *= t->data->dims->data[i];
  if (p->inner < 1) return Fail(context, op, "data rows must not be empty");
  p->edges = t->ids->dims->data[0];
  if (t->gather != nullptr && t->gather->dims->data[0] != p->edges) {
    return Fail(context, op, "gather indices and segment ids must have the same length");
  }
  p->has_gather = t->gather != nullptr;
  if (t->data->bytes != static_cast<size_t>(data_elements) ||
      t->ids->bytes != static_cast<size_t>(p->edges) * sizeof(int32_t) ||
      (t->gather != nullptr && t->gather->bytes != static_cast<size_t>(p->edges) * sizeof(int32_t))) {
    return Fail(context, op, "a tensor's byte size does not match its shape");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_check_output_allocation(t->output->allocation_type, t->output->is_variable, error,
                                           sizeof(error)) != 0) {
    return Fail(context, op, error);
  }
  if (t->output->allocation != nullptr) return Fail(context, op, "the output tensor's data belongs to the model");
  *out_data = data;
  return kTfLiteOk;
}

bool KnownInPrepare(const TfLiteTensor* t) {
  return (t->allocation_type == kTfLiteMmapRo || t->allocation_type == kTfLitePersistentRo) && t->data != nullptr;
}

TfLiteStatus Segments(TfLiteContext* context, Tensors* t) {
  TfqGraphProblem* p = &t->problem;
  if (t->num_segments == nullptr) {
    p->segments = p->rows;
  } else {
    if (t->num_segments->data == nullptr || t->num_segments->bytes != sizeof(int32_t)) {
      return Fail(context, p->op, "num_segments has no value");
    }
    int32_t value;
    memcpy(&value, t->num_segments->data, sizeof(value));
    if (value < 0) {
      char message[96];
      snprintf(message, sizeof(message), "num_segments must be >= 0; got %d", static_cast<int>(value));
      return Fail(context, p->op, message);
    }
    p->segments = value;
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_graph_check(p, error, sizeof(error)) != 0) return FailCore(context, error);
  return kTfLiteOk;
}

TfLiteStatus ResizeOutput(TfLiteContext* context, Tensors* t) {
  const TfLiteIntArray* in = t->data->dims;
  const TfLiteIntArray* current = t->output->dims;
  bool same = current != nullptr && current->size == in->size && current->data[0] == t->problem.segments;
  for (int i = 1; same && i < in->size; ++i) same = current->data[i] == in->data[i];
  // A dynamic output of the right shape may still have no memory (Prepare released it): resize it anyway.
  if (same && (t->output->allocation_type != kTfLiteDynamic || t->output->data != nullptr)) return kTfLiteOk;
  TfLiteIntArray* shape = TfLiteIntArrayCreate(in->size);
  if (shape == nullptr) return Fail(context, t->problem.op, "out of memory");
  shape->data[0] = static_cast<int>(t->problem.segments);
  for (int i = 1; i < in->size; ++i) shape->data[i] = in->data[i];
  return context->ResizeTensor(context, t->output, shape);  // takes ownership of `shape`
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  OpData* data;
  Tensors t;
  if (node->user_data != nullptr) static_cast<OpData*>(node->user_data)->prepared = 0;
  if (Gather(context, node, &data, &t) != kTfLiteOk) return kTfLiteError;
  if (t.num_segments == nullptr || KnownInPrepare(t.num_segments)) {
    if (Segments(context, &t) != kTfLiteOk || ResizeOutput(context, &t) != kTfLiteOk) return kTfLiteError;
  } else {
    if (t.output->allocation_type != kTfLiteDynamic) {  // what TFLite's SetTensorToDynamic does
      t.output->allocation_type = kTfLiteDynamic;
      t.output->data = nullptr;  // arena memory, not owned
    }
  }
  data->prepared = 1;
  return kTfLiteOk;
}

bool Reserve(int32_t** buffer, size_t* capacity, size_t elements) {
  if (elements <= *capacity && *buffer != nullptr) return true;
  size_t n = elements > 0 ? elements : 1;
  int32_t* grown = static_cast<int32_t*>(realloc(*buffer, n * sizeof(int32_t)));
  if (grown == nullptr) return false;
  *buffer = grown;
  *capacity = n;
  return true;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  OpData* data;
  Tensors t;
  if (Gather(context, node, &data, &t) != kTfLiteOk) return kTfLiteError;
  if (!data->prepared) return Fail(context, data->op, "Eval before a successful Prepare");
  if (Segments(context, &t) != kTfLiteOk) return kTfLiteError;
  if (t.output->allocation_type == kTfLiteDynamic && ResizeOutput(context, &t) != kTfLiteOk) return kTfLiteError;
  const TfqGraphProblem* p = &t.problem;
  int64_t out_elements = tfq_graph_output_elements(p);
  if (Elements(t.output) != out_elements || t.output->bytes != static_cast<size_t>(out_elements) ||
      (out_elements > 0 && t.output->data == nullptr)) {
    return Fail(context, p->op, "the output tensor does not have num_segments rows of the data's row shape");
  }
  size_t acc_elements = p->op == TFQ_GRAPH_DEGREE_NORM ? 0 : static_cast<size_t>(out_elements);
  if (!Reserve(&data->acc, &data->acc_capacity, acc_elements) ||
      !Reserve(&data->counts, &data->counts_capacity, static_cast<size_t>(p->segments))) {
    return Fail(context, p->op, "out of memory for the accumulators");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_graph_run(p, static_cast<const int8_t*>(t.data->data), t.data->bytes,
                    static_cast<const int32_t*>(t.ids->data), static_cast<size_t>(p->edges),
                    t.gather ? static_cast<const int32_t*>(t.gather->data) : nullptr,
                    t.gather ? static_cast<size_t>(p->edges) : 0, static_cast<int8_t*>(t.output->data),
                    t.output->bytes, data->acc, data->acc_capacity, data->counts, data->counts_capacity, error,
                    sizeof(error)) != 0) {
    return FailCore(context, error);
  }
  return kTfLiteOk;
}

struct PaddedRegistration {
  TfLiteRegistration registration;
  unsigned char reserved[128];
};

PaddedRegistration g_registrations[4] = {
    {{Init<TFQ_GRAPH_SEGMENT_SUM>, Free, Prepare, Eval, nullptr, kTfLiteBuiltinCustom, TFQ_SEGMENT_SUM_NAME, 1,
      nullptr, nullptr, 0}, {0}},
    {{Init<TFQ_GRAPH_SEGMENT_MEAN>, Free, Prepare, Eval, nullptr, kTfLiteBuiltinCustom, TFQ_SEGMENT_MEAN_NAME, 1,
      nullptr, nullptr, 0}, {0}},
    {{Init<TFQ_GRAPH_GCN_AGGREGATE>, Free, Prepare, Eval, nullptr, kTfLiteBuiltinCustom, TFQ_GCN_AGGREGATE_NAME,
      1, nullptr, nullptr, 0}, {0}},
    {{Init<TFQ_GRAPH_DEGREE_NORM>, Free, Prepare, Eval, nullptr, kTfLiteBuiltinCustom, TFQ_DEGREE_NORM_NAME, 1,
      nullptr, nullptr, 0}, {0}},
};

}  // namespace

extern "C" TFQ_EXPORT void TfqGraphOpsRegister(tflite::MutableOpResolver* resolver) {
  for (auto& entry : g_registrations) {
    resolver->AddCustom(entry.registration.custom_name, &entry.registration, 1);
  }
}

// One registration by op name (nullptr for an unknown name), for C++ hosts that own their resolver.
extern "C" TFQ_EXPORT const TfLiteRegistration* TfqGraphOpRegistration(const char* name) {
  int op = tfq_graph_op_from_name(name);
  return op < 0 ? nullptr : &g_registrations[op].registration;
}
