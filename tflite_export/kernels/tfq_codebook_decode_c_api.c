/* TfqCodebookDecode for the TFLite / LiteRT C API (TfLiteOperator), e.g. in an Android app.
 *
 * Usage with the C API:
 *     TfLiteInterpreterOptionsAddOperator(options, TfqCodebookDecodeOperator());
 * The operator is created once and lives for the process (the C API requires it to outlive every
 * interpreter that uses it).
 *
 * Only the stable opaque API is used (TfLiteOpaqueContext / TfLiteOpaqueNode / TfLiteOpaqueTensor), so this
 * file does not depend on TFLite struct layouts. The declarations it uses are written from the documented
 * C API (tensorflow/lite/core/c/operator.h and c_api_opaque.h); a const qualifier that differs between
 * releases does not change the ABI. They live in tfq_c_api.h (shared with tfq_graph_ops_c_api.c), which also
 * says how to pick the TfLiteOperatorCreate form of a release (TFQ_OPERATOR_CREATE_WITH_DATA,
 * TFQ_OPERATOR_CREATE_USER_DATA).
 *
 * Prepare checks, besides attributes and sizes, that the output is memory the runtime lets an op write
 * (TfLiteOpaqueTensorGetAllocationType: never model memory, which a crafted file could otherwise make Invoke
 * write into), that it is not a graph input (TfLiteOpaqueContextGetInputs), and that no other node writes it and
 * no reader of it comes before this node, both in the file's operator order (node indices: the order the Python
 * readers check) and in the execution plan that runs. A kernel's context answers
 * GetExecutionPlan / GetNodeAndRegistration only in the delegate context, so Prepare acquires its own
 * subgraph's context with TfLiteOpaqueContextAcquireSubgraphContext (which switches it to the delegate
 * context), walks the plan with TfLiteOpaqueContextGetExecutionPlan / TfLiteOpaqueContextGetNodeAndRegistration
 * / TfLiteOpaqueNodeInputs / TfLiteOpaqueNodeOutputs, and releases it with
 * TfLiteOpaqueContextReleaseSubgraphContext. The signatures follow c_api_opaque.h of LiteRT (checked against
 * its current header); the implementation of the acquire call switches the subgraph directly, which a
 * kernel's own context function pointers would refuse (they are stubs outside delegate preparation).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tfq_codebook_core.h"

#include "tfq_c_api.h"

typedef struct OpData {
  TfqCodebookAttrs attrs;
  int status;
  int prepared; /* 1 after a Prepare whose checks all passed */
  char error[TFQ_CODEBOOK_ERR_LEN];
} OpData;

/* Subgraphs the search for this node's own subgraph index tries at most (acquisition fails past the last). */
#define TFQ_MAX_SUBGRAPHS (1 << 20)

static void* Init(TfLiteOpaqueContext* context, const char* buffer, size_t length) {
  (void)context;
  OpData* data = (OpData*)calloc(1, sizeof(OpData));
  if (data == NULL) return NULL;
  data->status = tfq_codebook_parse_options((const uint8_t*)buffer, length, &data->attrs, data->error,
                                            sizeof(data->error));
  return data;
}

static void Free(TfLiteOpaqueContext* context, void* buffer) {
  (void)context;
  free(buffer);
}

static TfLiteStatusValue Fail(TfLiteOpaqueContext* context, const char* message) {
  TfLiteOpaqueContextReportError(context, "%s: %s", TFQ_CODEBOOK_OP_NAME, message);
  return kTfqStatusError;
}

/* A failure that names the output tensor. */
static TfLiteStatusValue FailOutput(TfLiteOpaqueContext* context, int index, const TfLiteOpaqueTensor* output,
                                    const char* message) {
  char name[96];
  tfq_codebook_safe_name(TfLiteOpaqueTensorName(output), name, sizeof(name));
  TfLiteOpaqueContextReportError(context, "%s: output tensor %d ('%s'): %s", TFQ_CODEBOOK_OP_NAME, index, name,
                                 message);
  return kTfqStatusError;
}

static int Contains(const int* list, int count, int value) {
  for (int i = 0; list != NULL && i < count; ++i) {
    if (list[i] == value) return 1;
  }
  return 0;
}

static TfLiteStatusValue Check(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node, OpData** out_data,
                               const TfLiteOpaqueTensor** packed, const TfLiteOpaqueTensor** codebook,
                               TfLiteOpaqueTensor** output, int* out_index) {
  OpData* data = (OpData*)TfLiteOpaqueNodeGetUserData(node);
  if (data == NULL) return Fail(context, "out of memory in Init");
  if (data->status != 0) return Fail(context, data->error);
  const int *inputs = NULL, *outputs = NULL;
  int num_inputs = 0, num_outputs = 0;
  if (TfLiteOpaqueNodeNumberOfInputs(node) != 2 || TfLiteOpaqueNodeNumberOfOutputs(node) != 1 ||
      TfLiteOpaqueNodeInputs(node, &inputs, &num_inputs) != kTfqStatusOk ||
      TfLiteOpaqueNodeOutputs(node, &outputs, &num_outputs) != kTfqStatusOk || num_inputs != 2 ||
      num_outputs != 1 || inputs == NULL || outputs == NULL) {
    return Fail(context, "expected 2 inputs (packed indices, codebook) and 1 output");
  }
  *packed = TfLiteOpaqueNodeGetInput(context, node, 0);
  *codebook = TfLiteOpaqueNodeGetInput(context, node, 1);
  *output = TfLiteOpaqueNodeGetOutput(context, node, 0);
  if (*packed == NULL || *codebook == NULL || *output == NULL) {
    return Fail(context, "an input or output tensor is missing");
  }
  *out_index = outputs[0];
  if (Contains(inputs, num_inputs, *out_index)) {
    return FailOutput(context, *out_index, *output, "the output is also an input of the decode node");
  }
  if (TfLiteOpaqueTensorType(*packed) != kTfqTypeUInt8 || TfLiteOpaqueTensorType(*codebook) != kTfqTypeInt8 ||
      TfLiteOpaqueTensorType(*output) != kTfqTypeInt8) {
    return Fail(context, "expected uint8 packed indices, an int8 codebook and an int8 output");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_check_output_allocation(TfLiteOpaqueTensorGetAllocationType(*output),
                                           TfLiteOpaqueTensorIsVariable(*output), error, sizeof(error)) != 0) {
    return FailOutput(context, *out_index, *output, error);
  }
  int64_t elements = 1;
  int32_t rank = TfLiteOpaqueTensorNumDims(*output);
  for (int32_t i = 0; i < rank; ++i) elements *= TfLiteOpaqueTensorDim(*output, i);
  if (rank < 0 || elements < 0 || (uint64_t)elements != (uint64_t)TfLiteOpaqueTensorByteSize(*output)) {
    return Fail(context, "the output tensor's shape does not match its byte size");
  }
  if (tfq_codebook_check_sizes(&data->attrs, TfLiteOpaqueTensorByteSize(*packed),
                               TfLiteOpaqueTensorByteSize(*codebook), TfLiteOpaqueTensorByteSize(*output),
                               error, sizeof(error)) != 0) {
    return Fail(context, error);
  }
  *out_data = data;
  return kTfqStatusOk;
}

/* The graph inputs, and the execution plan walked in the delegate context of this node's own subgraph. */
static TfLiteStatusValue CheckGraph(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node, int out_index,
                                    const TfLiteOpaqueTensor* output) {
  const int* graph_inputs = NULL;
  int num_graph_inputs = 0;
  if (TfLiteOpaqueContextGetInputs(context, &graph_inputs, &num_graph_inputs) != kTfqStatusOk) {
    return FailOutput(context, out_index, output, "could not read the graph inputs");
  }
  if (Contains(graph_inputs, num_graph_inputs, out_index)) {
    return FailOutput(context, out_index, output, "the output tensor is a graph input; a decode node must write "
                      "an intermediate tensor");
  }
  int self = -1;
  for (int i = 0; i < TFQ_MAX_SUBGRAPHS; ++i) {
    TfLiteOpaqueContext* acquired = NULL;
    if (TfLiteOpaqueContextAcquireSubgraphContext(context, i, &acquired) != kTfqStatusOk) break;
    if (acquired == context) {
      self = i;
      break;
    }
    TfLiteOpaqueContextReleaseSubgraphContext(context, i);
  }
  if (self < 0) {
    return FailOutput(context, out_index, output, "could not find the decode node's subgraph, so its execution "
                      "order cannot be checked");
  }
  char error[TFQ_CODEBOOK_ERR_LEN] = "";
  int rc = 0;
  TfLiteIntArray* plan = NULL;
  if (TfLiteOpaqueContextGetExecutionPlan(context, &plan) != kTfqStatusOk || plan == NULL) {
    rc = -1;
    snprintf(error, sizeof(error), "could not read the execution plan");
  }
  /* Node indices are the file's operator order (delegate nodes are appended after every original node, so the
   * plan's largest index bounds them all): the order the Python readers check. Then the plan that runs. */
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
      TfLiteOpaqueNode* other = NULL;
      TfLiteOperator* registration = NULL;
      const int *inputs = NULL, *outputs = NULL;
      int num_inputs = 0, num_outputs = 0;
      if (TfLiteOpaqueContextGetNodeAndRegistration(context, index, &other, &registration) != kTfqStatusOk ||
          other == NULL || TfLiteOpaqueNodeInputs(other, &inputs, &num_inputs) != kTfqStatusOk ||
          TfLiteOpaqueNodeOutputs(other, &outputs, &num_outputs) != kTfqStatusOk) {
        rc = -1;
        snprintf(error, sizeof(error), "could not read node %d", index);
        break;
      }
      rc = tfq_codebook_order_node(&order, index, other == node, inputs, num_inputs, outputs, num_outputs, error,
                                   sizeof(error));
    }
    if (rc == 0) rc = tfq_codebook_order_end(&order, error, sizeof(error));
  }
  TfLiteOpaqueContextReleaseSubgraphContext(context, self); /* back to the kernel context */
  return rc == 0 ? kTfqStatusOk : FailOutput(context, out_index, output, error);
}

static TfLiteStatusValue Prepare(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node) {
  OpData* data;
  const TfLiteOpaqueTensor *packed, *codebook;
  TfLiteOpaqueTensor* output;
  int out_index;
  OpData* user = (OpData*)TfLiteOpaqueNodeGetUserData(node);
  if (user != NULL) user->prepared = 0;
  if (Check(context, node, &data, &packed, &codebook, &output, &out_index) != kTfqStatusOk) return kTfqStatusError;
  if (CheckGraph(context, node, out_index, output) != kTfqStatusOk) return kTfqStatusError;
  data->prepared = 1;
  return kTfqStatusOk;
}

static TfLiteStatusValue Invoke(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node) {
  OpData* data;
  const TfLiteOpaqueTensor *packed, *codebook;
  TfLiteOpaqueTensor* output;
  int out_index;
  if (Check(context, node, &data, &packed, &codebook, &output, &out_index) != kTfqStatusOk) return kTfqStatusError;
  if (!data->prepared) return Fail(context, "Invoke before a successful Prepare");
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_decode(&data->attrs, (const uint8_t*)TfLiteOpaqueTensorData(packed),
                          TfLiteOpaqueTensorByteSize(packed), (const int8_t*)TfLiteOpaqueTensorData(codebook),
                          TfLiteOpaqueTensorByteSize(codebook), (int8_t*)TfLiteOpaqueTensorData(output),
                          TfLiteOpaqueTensorByteSize(output), error, sizeof(error)) != 0) {
    return Fail(context, error);
  }
  return kTfqStatusOk;
}

/* Not thread-safe on first call: call it once before creating interpreters on several threads. */
TFQ_EXPORT TfLiteOperator* TfqCodebookDecodeOperator(void) {
  static TfLiteOperator* op = NULL;
  if (op == NULL) {
    op = TFQ_OPERATOR_CREATE(kTfqBuiltinCustom, TFQ_CODEBOOK_OP_NAME, 1);
    if (op == NULL) return NULL;
    TfLiteOperatorSetInit(op, Init);
    TfLiteOperatorSetFree(op, Free);
    TfLiteOperatorSetPrepare(op, Prepare);
    TfLiteOperatorSetInvoke(op, Invoke);
  }
  return op;
}
