/* A stand-in for the TFLite C API functions tfq_codebook_decode_c_api.c calls, for testing that file on a
 * machine without the TFLite C library (TensorFlow's wheel exports none of them). It drives one node through
 * Init, Prepare, Invoke and Free the way the runtime would. Test-only; never linked into a real app.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_codebook_core.h"

typedef int TfLiteStatusValue;

struct TfLiteOpaqueTensor {
  int type;
  int32_t num_dims;
  int32_t dims[1];
  void* data;
  size_t bytes;
};

struct TfLiteOpaqueNode {
  const struct TfLiteOpaqueTensor* inputs[2];
  struct TfLiteOpaqueTensor* outputs[1];
  int num_inputs;
  int num_outputs;
  void* user_data;
};

struct TfLiteOpaqueContext {
  char error[TFQ_CODEBOOK_ERR_LEN * 2];
};

typedef struct TfLiteOpaqueContext TfLiteOpaqueContext;
typedef struct TfLiteOpaqueNode TfLiteOpaqueNode;
typedef struct TfLiteOpaqueTensor TfLiteOpaqueTensor;

typedef struct TfLiteOperator {
  int builtin_code;
  const char* custom_name;
  int version;
  void* (*init)(TfLiteOpaqueContext*, const char*, size_t);
  void (*free_fn)(TfLiteOpaqueContext*, void*);
  TfLiteStatusValue (*prepare)(TfLiteOpaqueContext*, TfLiteOpaqueNode*);
  TfLiteStatusValue (*invoke)(TfLiteOpaqueContext*, TfLiteOpaqueNode*);
} TfLiteOperator;

TfLiteOperator* TfLiteOperatorCreate(int builtin_code, const char* custom_name, int version) {
  TfLiteOperator* op = (TfLiteOperator*)calloc(1, sizeof(TfLiteOperator));
  if (op == NULL) return NULL;
  op->builtin_code = builtin_code;
  op->custom_name = custom_name;
  op->version = version;
  return op;
}

void TfLiteOperatorSetInit(TfLiteOperator* op, void* (*init)(TfLiteOpaqueContext*, const char*, size_t)) {
  op->init = init;
}
void TfLiteOperatorSetFree(TfLiteOperator* op, void (*free_fn)(TfLiteOpaqueContext*, void*)) {
  op->free_fn = free_fn;
}
void TfLiteOperatorSetPrepare(TfLiteOperator* op,
                              TfLiteStatusValue (*prepare)(TfLiteOpaqueContext*, TfLiteOpaqueNode*)) {
  op->prepare = prepare;
}
void TfLiteOperatorSetInvoke(TfLiteOperator* op,
                             TfLiteStatusValue (*invoke)(TfLiteOpaqueContext*, TfLiteOpaqueNode*)) {
  op->invoke = invoke;
}

int TfLiteOpaqueNodeNumberOfInputs(const TfLiteOpaqueNode* node) { return node->num_inputs; }
int TfLiteOpaqueNodeNumberOfOutputs(const TfLiteOpaqueNode* node) { return node->num_outputs; }
void* TfLiteOpaqueNodeGetUserData(const TfLiteOpaqueNode* node) { return node->user_data; }

const TfLiteOpaqueTensor* TfLiteOpaqueNodeGetInput(const TfLiteOpaqueContext* context,
                                                   const TfLiteOpaqueNode* node, int index) {
  (void)context;
  return index >= 0 && index < node->num_inputs ? node->inputs[index] : NULL;
}

TfLiteOpaqueTensor* TfLiteOpaqueNodeGetOutput(TfLiteOpaqueContext* context, const TfLiteOpaqueNode* node,
                                              int index) {
  (void)context;
  return index >= 0 && index < node->num_outputs ? node->outputs[index] : NULL;
}

int TfLiteOpaqueTensorType(const TfLiteOpaqueTensor* tensor) { return tensor->type; }
int32_t TfLiteOpaqueTensorNumDims(const TfLiteOpaqueTensor* tensor) { return tensor->num_dims; }
int32_t TfLiteOpaqueTensorDim(const TfLiteOpaqueTensor* tensor, int32_t i) { return tensor->dims[i]; }
size_t TfLiteOpaqueTensorByteSize(const TfLiteOpaqueTensor* tensor) { return tensor->bytes; }
void* TfLiteOpaqueTensorData(const TfLiteOpaqueTensor* tensor) { return tensor->data; }

void TfLiteOpaqueContextReportError(TfLiteOpaqueContext* context, const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(context->error, sizeof(context->error), format, args);
  va_end(args);
}

extern TfLiteOperator* TfqCodebookDecodeOperator(void);

/* Runs one TfqCodebookDecode node over 1-D tensors. Returns 0 on success, 1 when Prepare or Invoke failed
 * (the reported error is copied to `err`), -1 when the operator is not registered as expected. */
TFQ_EXPORT int tfq_mock_c_api_run(const uint8_t* options, size_t options_len, const uint8_t* packed,
                                  size_t packed_len, const int8_t* codebook, size_t codebook_len, int8_t* out,
                                  size_t out_len, char* err, size_t err_len) {
  TfLiteOperator* op = TfqCodebookDecodeOperator();
  if (op == NULL || op->builtin_code != 32 || op->custom_name == NULL ||
      strcmp(op->custom_name, TFQ_CODEBOOK_OP_NAME) != 0 || op->init == NULL || op->prepare == NULL ||
      op->invoke == NULL || op->free_fn == NULL) {
    snprintf(err, err_len, "TfqCodebookDecodeOperator() returned an incomplete operator");
    return -1;
  }
  TfLiteOpaqueContext context;
  memset(&context, 0, sizeof(context));
  TfLiteOpaqueTensor tensors[3] = {
      {3, 1, {(int32_t)packed_len}, (void*)packed, packed_len},
      {9, 1, {(int32_t)codebook_len}, (void*)codebook, codebook_len},
      {9, 1, {(int32_t)out_len}, out, out_len},
  };
  TfLiteOpaqueNode node = {{&tensors[0], &tensors[1]}, {&tensors[2]}, 2, 1, NULL};
  node.user_data = op->init(&context, (const char*)options, options_len);
  int status = op->prepare(&context, &node);
  if (status == 0) status = op->invoke(&context, &node);
  op->free_fn(&context, node.user_data);
  snprintf(err, err_len, "%s", context.error);
  return status == 0 ? 0 : 1;
}
