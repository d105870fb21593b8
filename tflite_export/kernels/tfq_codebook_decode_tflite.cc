// TfqCodebookDecode for the TFLite C++ interpreter (TensorFlow's `InterpreterWithCustomOps` in Python).
//
// The TFLite runtime structs this kernel touches are declared by hand in tfq_tflite_abi.h (TensorFlow
// 2.21's wheel ships no TFLite headers).
//
// Prepare checks, besides attributes and sizes, that the output is a tensor the runtime lets an op write
// (never model memory: a crafted file could otherwise make Eval write into the caller's model buffer or a
// read-only mapping), and that this node comes before every reader of the output and that no other node
// writes it, both in the file's operator order (the order the Python readers check; a delegate
// may reorder a misordered file into a working plan, which would make the readers disagree) and in the plan
// that runs. Outside delegate preparation TFLite replaces the context's GetExecutionPlan,
// GetNodeAndRegistration, AcquireSubgraphContext and ReleaseSubgraphContext by stubs that only report "The
// function is forbidden if not calling in delegate." (measured with TF 2.21), so Prepare calls the public
// static tflite::Subgraph::AcquireSubgraphContext (the entry point the C API's
// TfLiteOpaqueContextAcquireSubgraphContext uses) on its own subgraph: that switches the subgraph to the
// delegate context, where the context's GetExecutionPlan and GetNodeAndRegistration work; Prepare reads the
// plan and switches back with tflite::Subgraph::ReleaseSubgraphContext. (In TensorFlow's Python wheel the
// interpreter itself is compiled into tensorflow/lite/python/libpywrap_tflite_common.so, which exports no
// symbol; these calls, like MutableOpResolver::AddCustom below, run libtensorflow_cc.so.2's copy of the same
// TF 2.21 sources on that interpreter's objects, which holds because both copies come from one build.)
// TfLiteContext gives a kernel no way
// to list the graph inputs (Subgraph::inputs() is inline, not exported), so this entry point cannot check that
// the output is not a graph input; the C API entry point does (TfLiteOpaqueContextGetInputs), and so do the
// Python readers (tflite_export.codebook.describe / decompress, which load_interpreter runs first).
//
// Entry point: TfqCodebookDecodeRegister(resolver), a registerer in the sense of
// InterpreterWithCustomOps(custom_op_registerers=["TfqCodebookDecodeRegister"]): TensorFlow looks the name
// up with dlsym, so the library must be loaded with RTLD_GLOBAL first.
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_codebook_core.h"

#include "tfq_tflite_abi.h"

namespace {

struct OpData {
  TfqCodebookAttrs attrs;
  int status;    // 0 when the custom options parsed and passed the attribute checks
  int prepared;  // 1 after a Prepare whose checks all passed
  char error[TFQ_CODEBOOK_ERR_LEN];
};

// Subgraphs the search for this node's own subgraph index tries at most (AcquireSubgraphContext fails past
// the last one first).
constexpr int kMaxSubgraphs = 1 << 20;

void* Init(TfLiteContext*, const char* buffer, size_t length) {
  OpData* data = static_cast<OpData*>(calloc(1, sizeof(OpData)));
  if (data == nullptr) return nullptr;
  // Init cannot report an error; Prepare reports it.
  data->status = tfq_codebook_parse_options(reinterpret_cast<const uint8_t*>(buffer), length, &data->attrs,
                                            data->error, sizeof(data->error));
  return data;
}

void Free(TfLiteContext*, void* buffer) { free(buffer); }

// Tensor `slot` of an index list, or nullptr if the list or the index is out of range.
TfLiteTensor* GetTensor(TfLiteContext* context, const TfLiteIntArray* list, int slot) {
  if (list == nullptr || slot >= list->size) return nullptr;
  int index = list->data[slot];
  if (index < 0 || static_cast<size_t>(index) >= context->tensors_size) return nullptr;
  return &context->tensors[index];
}

int64_t NumElements(const TfLiteTensor* tensor) {
  if (tensor->dims == nullptr) return -1;
  int64_t count = 1;
  for (int i = 0; i < tensor->dims->size; ++i) count *= tensor->dims->data[i];
  return count;
}

TfLiteStatus Fail(TfLiteContext* context, const char* message) {
  context->ReportError(context, "%s: %s", TFQ_CODEBOOK_OP_NAME, message);
  return kTfLiteError;
}

// A failure that names the output tensor.
TfLiteStatus FailOutput(TfLiteContext* context, int index, const TfLiteTensor* output, const char* message) {
  char name[96];
  context->ReportError(context, "%s: output tensor %d ('%s'): %s", TFQ_CODEBOOK_OP_NAME, index,
                       tfq_codebook_safe_name(output->name, name, sizeof(name)), message);
  return kTfLiteError;
}

TfLiteStatus Check(TfLiteContext* context, TfLiteNode* node, OpData** out_data, TfLiteTensor** packed,
                   TfLiteTensor** codebook, TfLiteTensor** output) {
  OpData* data = static_cast<OpData*>(node->user_data);
  if (data == nullptr) return Fail(context, "out of memory in Init");
  if (data->status != 0) return Fail(context, data->error);
  if (node->inputs == nullptr || node->inputs->size != 2 || node->outputs == nullptr ||
      node->outputs->size != 1) {
    return Fail(context, "expected 2 inputs (packed indices, codebook) and 1 output");
  }
  *packed = GetTensor(context, node->inputs, 0);
  *codebook = GetTensor(context, node->inputs, 1);
  *output = GetTensor(context, node->outputs, 0);
  if (*packed == nullptr || *codebook == nullptr || *output == nullptr) {
    return Fail(context, "an input or output tensor index is invalid");
  }
  int out_index = node->outputs->data[0];
  if (node->inputs->data[0] == out_index || node->inputs->data[1] == out_index) {
    return FailOutput(context, out_index, *output, "the output is also an input of the decode node");
  }
  if ((*packed)->type != kTfLiteUInt8 || (*codebook)->type != kTfLiteInt8 || (*output)->type != kTfLiteInt8) {
    return Fail(context, "expected uint8 packed indices, an int8 codebook and an int8 output");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_check_output_allocation((*output)->allocation_type, (*output)->is_variable, error,
                                           sizeof(error)) != 0) {
    return FailOutput(context, out_index, *output, error);
  }
  if ((*output)->allocation != nullptr) {  // set only for tensors whose data lives in the model
    return FailOutput(context, out_index, *output, "the output tensor's data belongs to the model");
  }
  int64_t elements = NumElements(*output);
  if (elements < 0 || static_cast<uint64_t>(elements) != (*output)->bytes) {
    return Fail(context, "the output tensor's shape does not match its byte size");
  }
  if (tfq_codebook_check_sizes(&data->attrs, (*packed)->bytes, (*codebook)->bytes, (*output)->bytes, error,
                               sizeof(error)) != 0) {
    return Fail(context, error);
  }
  *out_data = data;
  return kTfLiteOk;
}

// Walks the execution plan of this node's subgraph (see the file comment for why through
// Subgraph::AcquireSubgraphContext) and checks the order of the output's writers and readers.
TfLiteStatus CheckSchedule(TfLiteContext* context, TfLiteNode* node, const TfLiteTensor* output) {
  int out_index = node->outputs->data[0];
  // This subgraph's index: the one whose context is `context` (each acquisition of another is released).
  int self = -1;
  for (int i = 0; i < kMaxSubgraphs; ++i) {
    TfLiteContext* acquired = nullptr;
    if (tflite::Subgraph::AcquireSubgraphContext(context, i, &acquired) != kTfLiteOk) break;
    if (acquired == context) {
      self = i;
      break;
    }
    tflite::Subgraph::ReleaseSubgraphContext(context, i);
  }
  if (self < 0) {
    return FailOutput(context, out_index, output, "could not find the decode node's subgraph, so its execution "
                      "order cannot be checked");
  }
  char error[TFQ_CODEBOOK_ERR_LEN] = "";
  int rc = 0;
  TfLiteIntArray* plan = nullptr;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk || plan == nullptr) {
    rc = -1;
    snprintf(error, sizeof(error), "could not read the execution plan");
  }
  // Node indices are the file's operator order (delegate nodes are appended after every original node, so the
  // plan's largest index bounds them all): the order the Python readers check. Then the plan that runs.
  int last = -1;
  for (int step = 0; rc == 0 && step < plan->size; ++step) {
    if (plan->data[step] > last) last = plan->data[step];
  }
  for (int pass = 0; rc == 0 && pass < 2; ++pass) {
    TfqCodebookOrder order;
    tfq_codebook_order_begin(&order, out_index, pass == 0 ? "operator order" : "execution plan");
    int count = pass == 0 ? last + 1 : plan->size;
    for (int step = 0; rc == 0 && step < count; ++step) {
      int index = pass == 0 ? step : plan->data[step];
      TfLiteNode* other = nullptr;
      TfLiteRegistration* registration = nullptr;
      if (context->GetNodeAndRegistration(context, index, &other, &registration) != kTfLiteOk ||
          other == nullptr) {
        rc = -1;
        snprintf(error, sizeof(error), "could not read node %d", index);
        break;
      }
      const TfLiteIntArray* in = other->inputs;
      const TfLiteIntArray* out = other->outputs;
      rc = tfq_codebook_order_node(&order, index, other == node, in ? in->data : nullptr, in ? in->size : 0,
                                   out ? out->data : nullptr, out ? out->size : 0, error, sizeof(error));
    }
    if (rc == 0) rc = tfq_codebook_order_end(&order, error, sizeof(error));
  }
  tflite::Subgraph::ReleaseSubgraphContext(context, self);  // back to the kernel context
  return rc == 0 ? kTfLiteOk : FailOutput(context, out_index, output, error);
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  OpData* data;
  TfLiteTensor *packed, *codebook, *output;
  if (node->user_data != nullptr) static_cast<OpData*>(node->user_data)->prepared = 0;
  if (Check(context, node, &data, &packed, &codebook, &output) != kTfLiteOk) return kTfLiteError;
  if (CheckSchedule(context, node, output) != kTfLiteOk) return kTfLiteError;
  data->prepared = 1;
  return kTfLiteOk;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  OpData* data;
  TfLiteTensor *packed, *codebook, *output;
  if (Check(context, node, &data, &packed, &codebook, &output) != kTfLiteOk) return kTfLiteError;
  if (!data->prepared) return Fail(context, "Eval before a successful Prepare");
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_decode(&data->attrs, static_cast<const uint8_t*>(packed->data), packed->bytes,
                          static_cast<const int8_t*>(codebook->data), codebook->bytes,
                          static_cast<int8_t*>(output->data), output->bytes, error, sizeof(error)) != 0) {
    return Fail(context, error);
  }
  return kTfLiteOk;
}

// AddCustom copies sizeof(TfLiteRegistration) bytes of the library's own definition; the zeroed tail keeps
// that copy inside this object should a later TFLite append fields.
struct PaddedRegistration {
  TfLiteRegistration registration;
  unsigned char reserved[128];
};

PaddedRegistration g_registration = {
    {Init, Free, Prepare, Eval, nullptr, kTfLiteBuiltinCustom, TFQ_CODEBOOK_OP_NAME, 1, nullptr, nullptr, 0},
    {0}};

}  // namespace

extern "C" TFQ_EXPORT void TfqCodebookDecodeRegister(tflite::MutableOpResolver* resolver) {
  resolver->AddCustom(TFQ_CODEBOOK_OP_NAME, &g_registration.registration, 1);
}

// The registration itself, for C++ hosts that own their resolver: resolver.AddCustom("TfqCodebookDecode",
// TfqCodebookDecodeRegistration()).
extern "C" TFQ_EXPORT const TfLiteRegistration* TfqCodebookDecodeRegistration(void) {
  return &g_registration.registration;
}
