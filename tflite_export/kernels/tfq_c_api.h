/* The subset of the TFLite / LiteRT C API (TfLiteOperator and the opaque context/node/tensor API) that the C API
 * entry points of this folder call, declared by hand so that they need no TFLite header. Written from
 * tensorflow/lite/core/c/operator.h, c_api_opaque.h and common.h; a const qualifier that differs between
 * releases does not change the ABI. Included by tfq_codebook_decode_c_api.c and tfq_graph_ops_c_api.c (not by
 * mock_tflite_c_api.c, which defines these functions for the tests).
 *
 * Creating an operator: TFQ_OPERATOR_CREATE(code, name, version) calls, by default, the three-argument
 * TfLiteOperatorCreate (TF 2.16 - 2.18); define TFQ_OPERATOR_CREATE_WITH_DATA to call
 * TfLiteOperatorCreateWithData(..., NULL) (releases that had both), or TFQ_OPERATOR_CREATE_USER_DATA for releases
 * whose TfLiteOperatorCreate itself takes the user_data argument. */
#ifndef TFQ_C_API_H_
#define TFQ_C_API_H_

#include <stddef.h>
#include <stdint.h>

typedef struct TfLiteOpaqueContext TfLiteOpaqueContext;
typedef struct TfLiteOpaqueNode TfLiteOpaqueNode;
typedef struct TfLiteOpaqueTensor TfLiteOpaqueTensor;
typedef struct TfLiteOperator TfLiteOperator;
typedef int TfLiteStatusValue; /* TfLiteStatus: kTfLiteOk = 0, kTfLiteError = 1 */

/* Public structs of tensorflow/lite/core/c/common.h. */
typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;
typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;
typedef struct TfLiteQuantization {
  int type; /* TfLiteQuantizationType (an int-sized enum): kTfLiteNoQuantization = 0, kTfLiteAffineQuantization = 1 */
  void* params;
} TfLiteQuantization;

enum { kTfqStatusOk = 0, kTfqStatusError = 1 };
enum { kTfqTypeInt32 = 2, kTfqTypeUInt8 = 3, kTfqTypeInt8 = 9 };
enum { kTfqBuiltinCustom = 32 };

#if defined(TFQ_OPERATOR_CREATE_WITH_DATA)
extern TfLiteOperator* TfLiteOperatorCreateWithData(int builtin_code, const char* custom_name, int version,
                                                    void* user_data);
#define TFQ_OPERATOR_CREATE(code, name, version) TfLiteOperatorCreateWithData((code), (name), (version), NULL)
#elif defined(TFQ_OPERATOR_CREATE_USER_DATA)
extern TfLiteOperator* TfLiteOperatorCreate(int builtin_code, const char* custom_name, int version,
                                            void* user_data);
#define TFQ_OPERATOR_CREATE(code, name, version) TfLiteOperatorCreate((code), (name), (version), NULL)
#else
extern TfLiteOperator* TfLiteOperatorCreate(int builtin_code, const char* custom_name, int version);
#define TFQ_OPERATOR_CREATE(code, name, version) TfLiteOperatorCreate((code), (name), (version))
#endif
extern void TfLiteOperatorDelete(TfLiteOperator* op);
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
extern TfLiteStatusValue TfLiteOpaqueNodeInputs(const TfLiteOpaqueNode* node, const int** inputs, int* num_inputs);
extern TfLiteStatusValue TfLiteOpaqueNodeOutputs(const TfLiteOpaqueNode* node, const int** outputs,
                                                 int* num_outputs);
extern int TfLiteOpaqueTensorType(const TfLiteOpaqueTensor* tensor);
extern int32_t TfLiteOpaqueTensorNumDims(const TfLiteOpaqueTensor* tensor);
extern int32_t TfLiteOpaqueTensorDim(const TfLiteOpaqueTensor* tensor, int32_t dim_index);
extern size_t TfLiteOpaqueTensorByteSize(const TfLiteOpaqueTensor* tensor);
extern void* TfLiteOpaqueTensorData(const TfLiteOpaqueTensor* tensor);
extern int TfLiteOpaqueTensorGetAllocationType(const TfLiteOpaqueTensor* tensor); /* TfLiteAllocationType */
extern int TfLiteOpaqueTensorIsVariable(const TfLiteOpaqueTensor* tensor);
extern const char* TfLiteOpaqueTensorName(const TfLiteOpaqueTensor* tensor);
extern TfLiteQuantization TfLiteOpaqueTensorGetQuantization(const TfLiteOpaqueTensor* tensor);
extern TfLiteQuantizationParams TfLiteOpaqueTensorGetQuantizationParams(const TfLiteOpaqueTensor* tensor);
extern void TfLiteOpaqueTensorSetAllocationTypeToDynamic(TfLiteOpaqueTensor* tensor);
extern TfLiteStatusValue TfLiteOpaqueContextResizeTensor(TfLiteOpaqueContext* context, TfLiteOpaqueTensor* tensor,
                                                         TfLiteIntArray* new_size);
extern TfLiteIntArray* TfLiteIntArrayCreate(int size);
extern void TfLiteOpaqueContextReportError(TfLiteOpaqueContext* context, const char* format, ...);
extern TfLiteStatusValue TfLiteOpaqueContextGetInputs(const TfLiteOpaqueContext* context, const int** inputs,
                                                      int* num_inputs);
extern TfLiteStatusValue TfLiteOpaqueContextAcquireSubgraphContext(TfLiteOpaqueContext* context,
                                                                   int subgraph_index,
                                                                   TfLiteOpaqueContext** acquired_context);
extern TfLiteStatusValue TfLiteOpaqueContextReleaseSubgraphContext(TfLiteOpaqueContext* context,
                                                                   int subgraph_index);
extern TfLiteStatusValue TfLiteOpaqueContextGetExecutionPlan(TfLiteOpaqueContext* context,
                                                             TfLiteIntArray** execution_plan);
extern TfLiteStatusValue TfLiteOpaqueContextGetNodeAndRegistration(TfLiteOpaqueContext* context,
                                                                   int node_index, TfLiteOpaqueNode** node,
                                                                   TfLiteOperator** registration);

#endif /* TFQ_C_API_H_ */
