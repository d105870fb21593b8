/* TfqCodebookDecode for the TFLite / LiteRT C API (TfLiteOperator), e.g. in an Android app.
 *
 * Usage with the C API:
 *     TfLiteInterpreterOptionsAddOperator(options, TfqCodebookDecodeOperator());
 * The operator is created once and lives for the process (the C API requires it to outlive every
 * interpreter that uses it).
 *
 * Only the stable opaque API is used (TfLiteOpaqueContext / TfLiteOpaqueNode / TfLiteOpaqueTensor), so this
 * file does not depend on TFLite struct layouts. The declarations below are written from the documented
 * C API (tensorflow/lite/core/c/operator.h and c_api_opaque.h); a const qualifier that differs between
 * releases does not change the ABI. TfLiteOperatorCreate takes three arguments since TF 2.16 / LiteRT; define
 * TFQ_OPERATOR_CREATE_WITH_DATA to call TfLiteOperatorCreateWithData(..., NULL) instead.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tfq_codebook_core.h"

typedef struct TfLiteOpaqueContext TfLiteOpaqueContext;
typedef struct TfLiteOpaqueNode TfLiteOpaqueNode;
typedef struct TfLiteOpaqueTensor TfLiteOpaqueTensor;
typedef struct TfLiteOperator TfLiteOperator;
typedef int TfLiteStatusValue; /* TfLiteStatus: kTfLiteOk = 0, kTfLiteError = 1 */

enum { kTfqStatusOk = 0, kTfqStatusError = 1 };
enum { kTfqTypeUInt8 = 3, kTfqTypeInt8 = 9 };
enum { kTfqBuiltinCustom = 32 };

#ifdef TFQ_OPERATOR_CREATE_WITH_DATA
extern TfLiteOperator* TfLiteOperatorCreateWithData(int builtin_code, const char* custom_name, int version,
                                                    void* user_data);
#else
extern TfLiteOperator* TfLiteOperatorCreate(int builtin_code, const char* custom_name, int version);
#endif
extern void TfLiteOperatorSetInit(TfLiteOperator* op,
                                  void* (*init)(TfLiteOpaqueContext*, const char*, size_t));
extern void TfLiteOperatorSetFree(TfLiteOperator* op, void (*free_fn)(TfLiteOpaqueContext*, void*));
extern void TfLiteOperatorSetPrepare(TfLiteOperator* op,
                                     TfLiteStatusValue (*prepare)(TfLiteOpaqueContext*, TfLiteOpaqueNode*));
extern void TfLiteOperatorSetInvoke(TfLiteOperator* op,
                                    TfLiteStatusValue (*invoke)(TfLiteOpaqueContext*, TfLiteOpaqueNode*));
extern int TfLiteOpaqueNodeNumberOfInputs(const TfLiteOpaqueNode* node);
extern int TfLiteOpaqueNodeNumberOfOutputs(const TfLiteOpaqueNode* node);
extern void* TfLiteOpaqueNodeGetUserData(const TfLiteOpaqueNode* node);
extern const TfLiteOpaqueTensor* TfLiteOpaqueNodeGetInput(const TfLiteOpaqueContext* context,
                                                          const TfLiteOpaqueNode* node, int index);
extern TfLiteOpaqueTensor* TfLiteOpaqueNodeGetOutput(TfLiteOpaqueContext* context, const TfLiteOpaqueNode* node,
                                                     int index);
extern int TfLiteOpaqueTensorType(const TfLiteOpaqueTensor* tensor);
extern int32_t TfLiteOpaqueTensorNumDims(const TfLiteOpaqueTensor* tensor);
extern int32_t TfLiteOpaqueTensorDim(const TfLiteOpaqueTensor* tensor, int32_t dim_index);
extern size_t TfLiteOpaqueTensorByteSize(const TfLiteOpaqueTensor* tensor);
extern void* TfLiteOpaqueTensorData(const TfLiteOpaqueTensor* tensor);
extern void TfLiteOpaqueContextReportError(TfLiteOpaqueContext* context, const char* format, ...);

typedef struct OpData {
  TfqCodebookAttrs attrs;
  int status;
  char error[TFQ_CODEBOOK_ERR_LEN];
} OpData;

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

static TfLiteStatusValue Check(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node, const OpData** out_data,
                               const TfLiteOpaqueTensor** packed, const TfLiteOpaqueTensor** codebook,
                               TfLiteOpaqueTensor** output) {
  const OpData* data = (const OpData*)TfLiteOpaqueNodeGetUserData(node);
  if (data == NULL) return Fail(context, "out of memory in Init");
  if (data->status != 0) return Fail(context, data->error);
  if (TfLiteOpaqueNodeNumberOfInputs(node) != 2 || TfLiteOpaqueNodeNumberOfOutputs(node) != 1) {
    return Fail(context, "expected 2 inputs (packed indices, codebook) and 1 output");
  }
  *packed = TfLiteOpaqueNodeGetInput(context, node, 0);
  *codebook = TfLiteOpaqueNodeGetInput(context, node, 1);
  *output = TfLiteOpaqueNodeGetOutput(context, node, 0);
  if (*packed == NULL || *codebook == NULL || *output == NULL) {
    return Fail(context, "an input or output tensor is missing");
  }
  if (TfLiteOpaqueTensorType(*packed) != kTfqTypeUInt8 || TfLiteOpaqueTensorType(*codebook) != kTfqTypeInt8 ||
      TfLiteOpaqueTensorType(*output) != kTfqTypeInt8) {
    return Fail(context, "expected uint8 packed indices, an int8 codebook and an int8 output");
  }
  int64_t elements = 1;
  int32_t rank = TfLiteOpaqueTensorNumDims(*output);
  for (int32_t i = 0; i < rank; ++i) elements *= TfLiteOpaqueTensorDim(*output, i);
  if (rank < 0 || elements < 0 || (uint64_t)elements != (uint64_t)TfLiteOpaqueTensorByteSize(*output)) {
    return Fail(context, "the output tensor's shape does not match its byte size");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_check_sizes(&data->attrs, TfLiteOpaqueTensorByteSize(*packed),
                               TfLiteOpaqueTensorByteSize(*codebook), TfLiteOpaqueTensorByteSize(*output),
                               error, sizeof(error)) != 0) {
    return Fail(context, error);
  }
  *out_data = data;
  return kTfqStatusOk;
}

static TfLiteStatusValue Prepare(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node) {
  const OpData* data;
  const TfLiteOpaqueTensor *packed, *codebook;
  TfLiteOpaqueTensor* output;
  return Check(context, node, &data, &packed, &codebook, &output);
}

static TfLiteStatusValue Invoke(TfLiteOpaqueContext* context, TfLiteOpaqueNode* node) {
  const OpData* data;
  const TfLiteOpaqueTensor *packed, *codebook;
  TfLiteOpaqueTensor* output;
  if (Check(context, node, &data, &packed, &codebook, &output) != kTfqStatusOk) return kTfqStatusError;
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
#ifdef TFQ_OPERATOR_CREATE_WITH_DATA
    op = TfLiteOperatorCreateWithData(kTfqBuiltinCustom, TFQ_CODEBOOK_OP_NAME, 1, NULL);
#else
    op = TfLiteOperatorCreate(kTfqBuiltinCustom, TFQ_CODEBOOK_OP_NAME, 1);
#endif
    if (op == NULL) return NULL;
    TfLiteOperatorSetInit(op, Init);
    TfLiteOperatorSetFree(op, Free);
    TfLiteOperatorSetPrepare(op, Prepare);
    TfLiteOperatorSetInvoke(op, Invoke);
  }
  return op;
}
