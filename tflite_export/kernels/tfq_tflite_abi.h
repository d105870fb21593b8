// Hand-written declarations of the TFLite C++ runtime structs the custom kernels touch, shared by
// tfq_codebook_decode_tflite.cc and tfq_graph_ops_tflite.cc.
//
// TensorFlow 2.21's wheel ships no TFLite headers. These must match the ABI of TFLite in libtensorflow_cc.so.2
// (TF 2.21, LP64): the layouts follow tensorflow/lite/core/c/common.h, whose fields are only ever appended
// ("semi-ABI stable"), and the static_asserts pin the offsets the kernels rely on. Only prefixes are declared
// for TfLiteContext and TfLiteNode (the runtime owns them; the kernels only read leading fields);
// TfLiteTensor is declared in full because the context's tensor array is indexed by its size.
#ifndef TFQ_TFLITE_ABI_H_
#define TFQ_TFLITE_ABI_H_

#include <stddef.h>
#include <stdint.h>

extern "C" {

typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

// Values of TFLite's TfLiteType enum that this kernel checks.
enum { kTfLiteInt32 = 2, kTfLiteUInt8 = 3, kTfLiteInt8 = 9 };
// TfLiteQuantizationType and TfLiteAllocationType values the kernels check.
enum { kTfLiteAffineQuantization = 1 };
enum { kTfLiteMmapRo = 1, kTfLiteDynamic = 4 };

// TfLiteAffineQuantization's scales (common.h).
typedef struct TfLiteFloatArray {
  int size;
  float data[];
} TfLiteFloatArray;
enum { kTfLiteBuiltinCustom = 32 };

struct TfLiteRegistration;

typedef struct TfLiteIntArray {
  int size;
  int data[];  // flexible array member, as in TFLite (a GNU extension in C++)
} TfLiteIntArray;

typedef struct TfLiteAffineQuantization {
  TfLiteFloatArray* scale;
  TfLiteIntArray* zero_point;
  int32_t quantized_dimension;
} TfLiteAffineQuantization;

// Exported by libtensorflow_cc.so.2 (tensorflow/lite/core/c/common.h); ResizeTensor takes ownership.
TfLiteIntArray* TfLiteIntArrayCreate(int size);
void TfLiteIntArrayFree(TfLiteIntArray* a);

typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef struct TfLiteQuantization {
  int type;  // TfLiteQuantizationType
  void* params;
} TfLiteQuantization;

typedef struct TfLiteTensor {
  int type;    // TfLiteType
  void* data;  // TfLitePtrUnion: a union of pointers
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  int allocation_type;  // TfLiteAllocationType
  size_t bytes;
  const void* allocation;
  const char* name;
  void* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {  // prefix
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
} TfLiteNode;

typedef struct TfLiteContext {  // prefix, up to GetNodeAndRegistration
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context, TfLiteIntArray** execution_plan);
  TfLiteTensor* tensors;
  void* impl_;
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext*, TfLiteTensor* tensor, TfLiteIntArray* new_size);
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
  void* AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int node_index, TfLiteNode** node,
                                         struct TfLiteRegistration** registration);
} TfLiteContext;

typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;
  void* (*async_kernel)(TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator;
} TfLiteRegistration;

}  // extern "C"

#if defined(__x86_64__) || defined(__aarch64__)
static_assert(sizeof(TfLiteTensor) == 112, "TfLiteTensor layout differs from TFLite's (LP64)");
static_assert(offsetof(TfLiteTensor, bytes) == 40, "TfLiteTensor.bytes offset");
static_assert(offsetof(TfLiteNode, user_data) == 32, "TfLiteNode.user_data offset");
static_assert(offsetof(TfLiteTensor, allocation_type) == 32, "TfLiteTensor.allocation_type offset");
static_assert(offsetof(TfLiteTensor, allocation) == 48, "TfLiteTensor.allocation offset");
static_assert(offsetof(TfLiteTensor, name) == 56, "TfLiteTensor.name offset");
static_assert(offsetof(TfLiteTensor, is_variable) == 77, "TfLiteTensor.is_variable offset");
static_assert(offsetof(TfLiteNode, inputs) == 0 && offsetof(TfLiteNode, outputs) == 8, "TfLiteNode lists");
static_assert(offsetof(TfLiteContext, GetExecutionPlan) == 8, "TfLiteContext.GetExecutionPlan offset");
static_assert(offsetof(TfLiteContext, tensors) == 16, "TfLiteContext.tensors offset");
static_assert(offsetof(TfLiteContext, ReportError) == 40, "TfLiteContext.ReportError offset");
static_assert(offsetof(TfLiteContext, GetNodeAndRegistration) == 56, "TfLiteContext.GetNodeAndRegistration offset");
static_assert(sizeof(TfLiteRegistration) == 88, "TfLiteRegistration layout differs from TFLite's");
#endif

namespace tflite {
// Declared, not defined: the call below links to MutableOpResolver::AddCustom(const char*,
// const TfLiteRegistration*, int) exported by libtensorflow_cc.so.2. No member is ever accessed.
class MutableOpResolver {
 public:
  void AddCustom(const char* name, const TfLiteRegistration* registration, int version);
};

// Declared, not defined: the public static entry points of tensorflow/lite/core/subgraph.h, exported by
// libtensorflow_cc.so.2 (they act on static_cast<Subgraph*>(context->impl_)). No member is ever accessed.
class Subgraph {
 public:
  static TfLiteStatus AcquireSubgraphContext(TfLiteContext* context, int subgraph_index,
                                             TfLiteContext** acquired_context);
  static TfLiteStatus ReleaseSubgraphContext(TfLiteContext* context, int subgraph_index);
};
}  // namespace tflite

#endif  // TFQ_TFLITE_ABI_H_
